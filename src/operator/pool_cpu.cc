// CPU kernels of GlobalAvgPool (see pool.h). Portable C++: a plane's sum is one chain of adds in
// memory order (no reassociation), so its latency is hidden by summing 8 planes side by side
// instead; the planes are shared out over the OpenMP threads. Under DNNL_MAX_CPU_ISA=AVX2
// oneDNN pools plain NCHW tensors with a non-JIT kernel (`simple_nchw`): a mobilenetv2_cifar
// step spent 6.5 ms in its global pooling's forward and backward there.
#include <omp.h>

#include <algorithm>
#include <cstdint>

#include "common.h"
#include "pool.h"

namespace igc {
namespace {

// Below this many values the pass runs on the calling thread.
constexpr int64_t kMinParallel = 1 << 16;
// Planes summed side by side: 8 independent chains of adds.
constexpr int64_t kPlanes = 8;

// float32: sum, then divide (oneDNN's pooling, which MXNet runs for float32); float64: each value
// divided, then summed (MXNet's own pooling kernel, which runs float64).
template <typename T>
inline T term(T v, T size) {
  if constexpr (sizeof(T) == 8) return v / size;
  return v;
}

template <typename T>
inline T finish(T acc, T size) {
  if constexpr (sizeof(T) == 8) return acc;
  return acc / size;
}

template <typename T>
void sum_planes(const T* x, T* out, int64_t first, int64_t last, int64_t plane) {
  const T size = static_cast<T>(plane);
  int64_t p = first;
  for (; p + kPlanes <= last; p += kPlanes) {
    T acc[kPlanes] = {};
    const T* rows = x + p * plane;
    for (int64_t i = 0; i < plane; ++i) {
      for (int64_t j = 0; j < kPlanes; ++j) acc[j] += term(rows[j * plane + i], size);
    }
    for (int64_t j = 0; j < kPlanes; ++j) out[p + j] = finish(acc[j], size);
  }
  for (; p < last; ++p) {
    T acc = 0;
    for (int64_t i = 0; i < plane; ++i) acc += term(x[p * plane + i], size);
    out[p] = finish(acc, size);
  }
}

template <typename T>
void spread_planes(const T* out_grad, T* grad, int64_t first, int64_t last, int64_t plane) {
  const T size = static_cast<T>(plane);
  for (int64_t p = first; p < last; ++p) {
    const T g = out_grad[p] / size;
    std::fill(grad + p * plane, grad + (p + 1) * plane, g);
  }
}

// fn(first, last) over [0, planes), in whole kPlanes blocks per thread but for the last.
template <typename Fn>
void over_planes(int64_t planes, int64_t plane, Fn fn) {
  const int threads = planes * plane < kMinParallel ? 1 : omp_get_max_threads();
  if (threads <= 1) return fn(0, planes);
  const int64_t blocks = (planes + kPlanes - 1) / kPlanes;
#pragma omp parallel num_threads(threads)
  {
    const int64_t t = omp_get_thread_num(), n = omp_get_num_threads();
    const int64_t first = std::min(planes, blocks * t / n * kPlanes);
    const int64_t last = std::min(planes, blocks * (t + 1) / n * kPlanes);
    if (first < last) fn(first, last);
  }
}

template <typename T>
void forward(const void* x, void* out, int64_t planes, int64_t plane) {
  over_planes(planes, plane, [&](int64_t first, int64_t last) {
    sum_planes(static_cast<const T*>(x), static_cast<T*>(out), first, last, plane);
  });
}

template <typename T>
void backward(const void* out_grad, void* grad, int64_t planes, int64_t plane) {
  over_planes(planes, plane, [&](int64_t first, int64_t last) {
    spread_planes(static_cast<const T*>(out_grad), static_cast<T*>(grad), first, last, plane);
  });
}

}  // namespace

void global_avg_pool_forward_cpu(int dtype, const void* x, void* out, int64_t planes,
                                 int64_t plane) {
  (dtype == kFloat64 ? forward<double> : forward<float>)(x, out, planes, plane);
}

void global_avg_pool_backward_cpu(int dtype, const void* out_grad, void* grad, int64_t planes,
                                  int64_t plane) {
  (dtype == kFloat64 ? backward<double> : backward<float>)(out_grad, grad, planes, plane);
}

}  // namespace igc
