"""`optimize_for_inference(symbol, arg_params, aux_params)`: the inference graph that scoring,
prediction and the ONNX writer all run.

1. Every BatchNorm folds into the convolution before it, also across permutations (`fold`).
2. On the CPU (device='cpu', fuse_blocks=True, float32 weights) every folded IGCV3 /
   MobileNetV2 block becomes one `IGCBlock` of the plugin over the same weights (`blocks`): its
   kernel keeps the expanded tensor in cache-sized bands and reads the permutation as an index
   table; where each group has multiples of 8 expanded and output channels its two 1x1 weights
   are packed (`{weight}_packed`) for the channel-blocked kernel. `fuse_blocks=False` (the ONNX
   writer's choice) or a GPU keeps stock MXNet ops.
3. IGCV3's remaining permutations vanish into grouped-convolution order (`interleave`).
The result computes the training graph's inference outputs (up to float rounding) and loads the
same parameter names, plus a `{conv}_bias` per folded convolution (and, for packed `IGCBlock`s,
`{conv}_weight_packed` in place of the 1x1 weights).
"""
from ..layers import DEVICES, check_choice, runs_on
from .blocks import fuse_blocks as _fuse_blocks
from .fold import fold_batchnorms
from .interleave import remove_interleaves
from .view import Graph, to_numpy


def optimize_for_inference(symbol, arg_params, aux_params, fold_batchnorm=True,
                           fuse_blocks=True, device="cpu", pack_blocks=True):
    """(symbol, arg_params, aux_params) for inference on `device` ('cpu' or 'gpu'); see the
    module docstring. fold_batchnorm=False keeps every BatchNorm (as MXNet's,
    use_global_stats=True) unfolded; fuse_blocks=False (or a GPU) keeps the folded blocks as
    stock ops instead of the plugin's IGCBlock; pack_blocks=False keeps every IGCBlock on its
    unpacked weights (the kernel with an AVX-512 GEMM) instead of the channel-blocked one."""
    check_choice("device", device, DEVICES)
    graph = Graph(symbol)
    special, changed = fold_batchnorms(graph, to_numpy({**arg_params, **aux_params}),
                                       fold_batchnorm)
    out = graph.rebuild(special)
    new_args = {**arg_params, **changed}
    if fold_batchnorm and fuse_blocks and runs_on("IGCBlock", device):
        out = _fuse_blocks(out, new_args, pack=pack_blocks)
    out = remove_interleaves(out, new_args)
    keep_args, keep_aux = set(out.list_arguments()), set(out.list_auxiliary_states())
    return (out, {k: v for k, v in new_args.items() if k in keep_args},
            {k: v for k, v in aux_params.items() if k in keep_aux})
