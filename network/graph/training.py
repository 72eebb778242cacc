"""The rewrite for training: MXNet's stem convolution as IGCConv, and two fusions of the plugin
BatchNorm into IGCConv:

- the stem, MXNet's Convolution of the network's input (dense, at most 3x3, unit stride: the
  CIFAR networks'), read by the plugin BatchNorm alone, runs as IGCConv (the same weight), whose
  plain-NCHW output and gradient meet that BatchNorm as they are: oneDNN's blocked ones went
  through four layout reorders of the stem's output per step (64 x 32 x 32 x 32: 1.2-3.6 ms
  each), more than the convolution itself; its BatchNorm then takes the second fusion as well;
- the BatchNorm's apply, read by an IGCConv alone, moves into that convolution (IGCConv's
  `in_act` inputs), so that the applied tensor is never written and read back; the
  convolution's backward hands the gradient on through the BatchNorm's;
- its statistics (BatchNormMoments) of an IGCConv's output come from that convolution
  (IGCConv's `moments` output), taken from each output plane as it is written instead of in a
  pass over the whole output afterwards; the same values bit for bit.

and one replacement: in a graph with such ops (which run on the CPU alone), MXNet's global
average Pooling (the head's) runs as the plugin's GlobalAvgPool, whose means and gradients are
that Pooling's bit for bit (float32: oneDNN's sums; float64: MXNet's): under DNNL_MAX_CPU_ISA=AVX2
oneDNN pools plain NCHW tensors with a non-JIT kernel (a mobilenetv2_cifar step, 64 x 1280 x 4 x
4: 2.6 ms forward and 4.0 ms backward there, 0.6 ms and 0.9 ms on the plugin op).

Only what an executor runs changes: the arguments, auxiliary states, names, outputs and
gradients are those of the symbol given (the same values bit for bit, but for the stem's
IGCConv, whose sums round differently from oneDNN's; on several threads a fused pointwise conv's
weight gradient to rounding, as the unfused one's), which is the one that checkpoints,
evaluation and the inference rewrites keep using. $IGC_FUSE_BATCHNORM=0 leaves the symbol as it
is; $IGC_FUSE_MOMENTS=0 leaves out the statistics' fusion only, $IGC_FUSE_STEM=0 the stem's
IGCConv only, $IGC_FUSE_POOL=0 the GlobalAvgPool only.
"""
import os

import mxnet as mx

from ..layers import runs_on
from .view import Graph, int_tuple, is_true, stock_node

FUSE_ENV = "IGC_FUSE_BATCHNORM"
MOMENTS_ENV = "IGC_FUSE_MOMENTS"
STEM_ENV = "IGC_FUSE_STEM"
POOL_ENV = "IGC_FUSE_POOL"
PLUGIN_BATCHNORM = ("BatchNormMoments", "BatchNormApply")
# The Convolution attributes IGCConv takes over, and those of MXNet's GPU kernels, which a stem
# may have too (any other, such as dilate or layout, leaves the Convolution as it is).
IGC_CONV_ATTRS = ("kernel", "stride", "pad", "num_filter", "num_group", "no_bias")
GPU_ATTRS = ("workspace", "cudnn_tune", "cudnn_off")
# The Pooling attributes a global average pooling may carry (any other, such as layout, or a
# padding, leaves it as it is).
POOL_ATTRS = ("kernel", "stride", "pad", "pool_type", "global_pool", "pooling_convention",
              "count_include_pad", "cudnn_off", "p_value")


def _is_stem(graph, i):
    """Whether node i is a stem that runs as IGCConv: MXNet's dense Convolution of at most 3x3
    at unit stride over a variable (the network's input), with no attribute IGCConv lacks, whose
    output only the plugin BatchNorm reads. The stride-2 stems of the 224x224 networks stay
    MXNet's: there IGCConv's backward was the slower (16 x 3 x 224 x 224 -> 32 with its BatchNorm,
    1 thread: 72 against 90 ms)."""
    if graph.op(i) != "Convolution" or graph.op(graph.nodes[i]["inputs"][0][0]) != "null":
        return False
    attrs = graph.attrs(i)
    kernel = int_tuple(attrs.get("kernel"))
    if set(attrs) - set(IGC_CONV_ATTRS + GPU_ATTRS) or int(attrs.get("num_group", "1")) != 1:
        return False
    if len(kernel) != 2 or kernel[0] * kernel[1] > 9 or set(int_tuple(attrs.get("stride"))) - {1}:
        return False
    readers = graph.readers_of((i, 0), ignore=())
    return bool(readers) and all(r != "head" and graph.op(r) in PLUGIN_BATCHNORM
                                 for r in readers)


def _stems_as_igc_conv(symbol):
    """`symbol` with every stem (see _is_stem) as IGCConv; the symbol itself where there is
    none."""
    graph = Graph(symbol)
    stems = {i for i in range(len(graph.nodes)) if _is_stem(graph, i)}
    if not stems:
        return symbol

    def special(i, node, entry):
        if i not in stems:
            return None
        attrs = {k: v for k, v in graph.attrs(i).items() if k in IGC_CONV_ATTRS}
        sym = mx.sym.IGCConv(*(entry(e) for e in node["inputs"]), name=node["name"], **attrs)
        return [sym[k] for k in range(len(sym.list_outputs()))]

    return graph.rebuild(special)


def _is_global_avg_pool(graph, i):
    """Whether node i is a 2-D global average Pooling without padding."""
    if graph.op(i) != "Pooling":
        return False
    attrs = graph.attrs(i)
    if set(attrs) - set(POOL_ATTRS) or not is_true(attrs.get("global_pool")):
        return False
    if attrs.get("pool_type") != "avg" or len(int_tuple(attrs.get("kernel"))) != 2:
        return False
    return not any(int_tuple(attrs.get("pad")))


def _global_avg_pools(symbol):
    """`symbol` with every global average Pooling (see _is_global_avg_pool) as GlobalAvgPool
    where it holds an op without GPU kernels (network.layers.runs_on: so the graph runs on the
    CPU; one MXNet may run on a GPU keeps MXNet's Pooling); the symbol itself where there is
    none."""
    graph = Graph(symbol)
    if all(runs_on(graph.op(i), "gpu") for i in range(len(graph.nodes))):
        return symbol
    pools = {i for i in range(len(graph.nodes)) if _is_global_avg_pool(graph, i)}
    if not pools:
        return symbol

    def special(i, node, entry):
        if i not in pools:
            return None
        return [mx.sym.GlobalAvgPool(entry(node["inputs"][0]), name=node["name"])]

    return graph.rebuild(special)


def _fusable(graph, conv, pointwise):
    """The BatchNormApply node that only IGCConv node `conv` reads, as its data, when the conv
    takes the fusion (no output activation, no input BatchNorm yet; with pointwise=False, not a
    1x1 kernel); else None."""
    attrs = graph.attrs(conv)
    if graph.op(conv) != "IGCConv" or "act" in attrs or "in_act" in attrs:
        return None
    if not pointwise and int_tuple(attrs.get("kernel")) == (1, 1):
        return None
    entry = graph.nodes[conv]["inputs"][0]
    apply = entry[0]
    if graph.op(apply) != "BatchNormApply" or entry[1] != 0:
        return None
    if graph.readers_of((apply, 0), ignore=()) != [conv]:
        return None
    return apply


def _moments_source(graph, i):
    """The IGCConv node whose output BatchNormMoments node i reads, else None."""
    if graph.op(i) != "BatchNormMoments":
        return None
    conv, index = graph.nodes[i]["inputs"][0][:2]
    if index != 0 or graph.op(conv) != "IGCConv" or is_true(graph.attrs(conv).get("moments")):
        return None
    return conv


def fuse_input_batchnorms(symbol, pointwise=True, moments=True, stem=True, pool=True):
    """`symbol` with its stem as IGCConv (see _is_stem), every BatchNormApply -> IGCConv pair
    (the apply read by nothing else) as one IGCConv with in_act, and every IGCConv ->
    BatchNormMoments pair as one IGCConv with moments; the symbol itself where there is none or
    $IGC_FUSE_BATCHNORM=0. pointwise=False leaves the applies before 1x1 convs, moments=False
    (or $IGC_FUSE_MOMENTS=0) the statistics, stem=False (or $IGC_FUSE_STEM=0) MXNet's stem
    Convolution, pool=False (or $IGC_FUSE_POOL=0) the global average Pooling as they are
    (benchmarks/fusion_ab.py measures each)."""
    if os.environ.get(FUSE_ENV, "1") == "0":
        return symbol
    moments = moments and os.environ.get(MOMENTS_ENV, "1") != "0"
    if stem and os.environ.get(STEM_ENV, "1") != "0":
        symbol = _stems_as_igc_conv(symbol)
    if pool and os.environ.get(POOL_ENV, "1") != "0":
        symbol = _global_avg_pools(symbol)
    graph = Graph(symbol)
    pairs, sources = {}, {}
    for i in range(len(graph.nodes)):
        apply = _fusable(graph, i, pointwise)
        if apply is not None:
            pairs[i] = apply
        conv = _moments_source(graph, i) if moments else None
        if conv is not None:
            sources[i] = conv
    if not pairs and not sources:
        return symbol
    applies, with_moments = set(pairs.values()), set(sources.values())

    def special(i, node, entry):
        if i in applies:
            return []  # read by its convolution alone, which now applies it
        if i in sources:
            return [entry((sources[i], 1))]  # the convolution's moments output
        if i not in pairs and i not in with_moments:
            return None
        attrs = dict(node.get("attrs", {}))
        if i in with_moments:
            attrs["moments"] = "True"
        if i not in pairs:
            return stock_node(node, [entry(e) for e in node["inputs"]], attrs)
        apply = graph.nodes[pairs[i]]
        x, gamma, beta, mean, invstd = (entry(e) for e in apply["inputs"])
        rest = [entry(e) for e in node["inputs"][1:]]
        attrs["in_act"] = graph.attrs(pairs[i]).get("act", "none")
        sym = mx.sym.IGCConv(x, gamma, beta, mean, invstd, *rest, name=node["name"], **attrs)
        return [sym[k] for k in range(len(sym.list_outputs()))]

    return graph.rebuild(special)
