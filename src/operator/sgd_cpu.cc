// CPU kernel of IGCSGDMomUpdate (see sgd.h). Plain C++ in the baseline ISA (no FMA contraction
// is possible there): each value takes the same float operations in the same order as MXNet's
// multi_sgd_mom_update, so the two give the same bits. One parallel loop over chunks of all the
// arrays, where MXNet runs one kernel per four arrays, over the longest one's length, testing
// every array's bound for each index.
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "sgd.h"

namespace igc {
namespace {

// Values per chunk: 16K floats of each of the four streams (256 KB in all) per hand-out.
constexpr int64_t kChunk = 16384;
// Below this many values in all the update runs on the calling thread.
constexpr int64_t kMinParallel = 65536;

template <bool kClip>
void update_range(const SgdArray& a, int64_t begin, int64_t end, float momentum,
                  float rescale_grad, float clip_gradient) {
  const float lr = a.lr, lr_wd = a.lr * a.wd, lr_rescale = a.lr * rescale_grad;
  for (int64_t i = begin; i < end; ++i) {
    const float w = a.weight[i];
    float mom;
    if (kClip) {
      float g = rescale_grad * a.grad[i];
      g = g > clip_gradient ? clip_gradient : (g < -clip_gradient ? -clip_gradient : g);
      mom = momentum * a.mom[i] - lr_wd * w - lr * g;
    } else {
      mom = momentum * a.mom[i] - lr_wd * w - lr_rescale * a.grad[i];
    }
    a.mom[i] = mom;
    a.out[i] = w + mom;
  }
}

}  // namespace

void sgd_mom_update_cpu(const std::vector<SgdArray>& arrays, float momentum, float rescale_grad,
                        float clip_gradient) {
  struct Chunk {
    int64_t array, begin, end;
  };
  std::vector<Chunk> chunks;
  int64_t total = 0;
  for (int64_t a = 0; a < static_cast<int64_t>(arrays.size()); ++a) {
    for (int64_t b = 0; b < arrays[a].size; b += kChunk) {
      chunks.push_back({a, b, std::min(arrays[a].size, b + kChunk)});
    }
    total += arrays[a].size;
  }
  const bool clip = clip_gradient >= 0.0f;
  const int threads = total < kMinParallel ? 1 : omp_get_max_threads();
  const int64_t count = static_cast<int64_t>(chunks.size());
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
  for (int64_t c = 0; c < count; ++c) {
    const Chunk& k = chunks[c];
    if (clip) {
      update_range<true>(arrays[k.array], k.begin, k.end, momentum, rescale_grad, clip_gradient);
    } else {
      update_range<false>(arrays[k.array], k.begin, k.end, momentum, rescale_grad,
                          clip_gradient);
    }
  }
}

}  // namespace igc
