// `IGCBlock`: the inference forward of one inverted-residual block of IGCV3 / MobileNetV2 with
// its BatchNorms folded into the convolutions, in one pass over plain NCHW float32 data:
//   e = W_exp * x + b_exp                 1x1 conv, `groups` groups, E filters (no activation)
//   e = Reorder(groups)(e)                only when `interleave` (IGCV3's permutation)
//   d = relu6(depthwise3x3(e) + b_dw)     stride 1 or 2, zero padding 1
//   y = W_lin * d + b_lin (+ x)           1x1 conv, `groups` groups; the identity when `residual`
// Bands of output rows are computed at a time, so the E-channel tensors e and d live only in
// per-thread buffers that fit in the cache; the permutation is an index table (no data moves).
// Nothing here knows about MXNet.
#ifndef IGC_OPERATOR_IGC_BLOCK_H_
#define IGC_OPERATOR_IGC_BLOCK_H_

#include <cstdint>
#include <functional>

namespace igc {

struct BlockGeometry {
  int64_t batch, in_channels, height, width;  // x: (batch, in_channels, height, width)
  int64_t expanded, out_channels, groups, stride;
  bool interleave, residual;

  int64_t out_height() const { return (height - 1) / stride + 1; }
  int64_t out_width() const { return (width - 1) / stride + 1; }
};

// Empty when the geometry is valid, else what is wrong with it.
const char* block_geometry_error(const BlockGeometry& g);

// Bytes of workspace for block_forward_cpu on the threads it will use.
int64_t block_workspace_bytes(const BlockGeometry& g);

// Weights in MXNet's layouts: w_exp (E, C/g), w_dw (E, 9), w_lin (C_out, E/g); biases per filter.
void block_forward_cpu(const BlockGeometry& g, const float* x, const float* w_exp,
                       const float* b_exp, const float* w_dw, const float* b_dw,
                       const float* w_lin, const float* b_lin, float* y, void* workspace);

// Packed weights (IGCBlock's packed_weights=True; igc_block_packed_cpu.cc): the same block with
// channel-blocked buffers. Each 1x1 conv's weight (F filters, g groups, K inputs per group) is
// packed per group and, within a group, per panel of 16 filters (the last panel 8 when F/g is an
// odd multiple of 8), each panel K rows x its width: packed[c][j] = W[f0 + j][c]. w_dw, the
// biases and the data as above. Needs E/g and C_out/g multiples of 8.
const char* packed_block_error(const BlockGeometry& g);  // empty, or what is wrong
int64_t packed_block_workspace_bytes(const BlockGeometry& g);
void packed_block_forward_cpu(const BlockGeometry& g, const float* x, const float* w_exp,
                              const float* b_exp, const float* w_dw, const float* b_dw,
                              const float* w_lin, const float* b_lin, float* y, void* workspace);

// How both kernels share a call among threads: each work item is one image's output rows
// [chunk j of `chunks`); more than one chunk only when there are fewer images than threads. Each
// thread works in its own `per_thread_floats` of the workspace.
struct BlockSplit {
  int64_t chunks, items, per_thread_floats;
  int threads;

  int64_t workspace_bytes() const { return 4 * per_thread_floats * threads + 64; }
};
BlockSplit block_split(const BlockGeometry& g, int64_t per_thread_floats);

// Runs item(image, row_begin, row_end, the thread's floats) for every work item of `split` on
// its threads; `workspace` holds split.workspace_bytes().
void run_block_items(const BlockGeometry& g, const BlockSplit& split, void* workspace,
                     const std::function<void(int64_t, int64_t, int64_t, float*)>& item);

}  // namespace igc

#endif  // IGC_OPERATOR_IGC_BLOCK_H_
