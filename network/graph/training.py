"""The rewrite for training, two fusions of the plugin BatchNorm into IGCConv:

- its apply, read by an IGCConv alone, moves into that convolution (IGCConv's `in_act`
  inputs), so that the applied tensor is never written and read back; the convolution's backward
  hands the gradient on through the BatchNorm's;
- its statistics (BatchNormMoments) of an IGCConv's output come from that convolution
  (IGCConv's `moments` output), taken from each output plane as it is written instead of in a
  pass over the whole output afterwards; the same values bit for bit.

Only what an executor runs changes: the arguments, auxiliary states, names, outputs and
gradients are those of the symbol given (the same values bit for bit; on several threads a fused
pointwise conv's weight gradient to rounding, as the unfused one's), which is the one that
checkpoints, evaluation and the inference rewrites keep using. $IGC_FUSE_BATCHNORM=0 leaves the
symbol as it is; $IGC_FUSE_MOMENTS=0 leaves out the second fusion only.
"""
import os

import mxnet as mx

from .view import Graph, int_tuple, is_true, stock_node

FUSE_ENV = "IGC_FUSE_BATCHNORM"
MOMENTS_ENV = "IGC_FUSE_MOMENTS"


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


def fuse_input_batchnorms(symbol, pointwise=True, moments=True):
    """`symbol` with every BatchNormApply -> IGCConv pair (the apply read by nothing else) as one
    IGCConv with in_act, and every IGCConv -> BatchNormMoments pair as one IGCConv with moments;
    the symbol itself where there is none or $IGC_FUSE_BATCHNORM=0. pointwise=False leaves the
    applies before 1x1 convs, moments=False (or $IGC_FUSE_MOMENTS=0) the statistics, as they
    are (benchmarks/fusion_ab.py measures each fusion)."""
    if os.environ.get(FUSE_ENV, "1") == "0":
        return symbol
    moments = moments and os.environ.get(MOMENTS_ENV, "1") != "0"
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
