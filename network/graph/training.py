"""The one rewrite for training: a plugin BatchNorm's apply read by an IGCConv alone moves into
that convolution (IGCConv's `in_act` inputs), so that the applied tensor is never written and
read back; the convolution's backward hands the gradient on through the BatchNorm's.

Only what an executor runs changes: the arguments, auxiliary states, names, outputs and
gradients are those of the symbol given (the same values bit for bit), which is the one that
checkpoints, evaluation and the inference rewrites keep using. Convolutions whose kernels do not
read their input through the per-item copy (pointwise ones) keep the BatchNormApply before them.
$IGC_FUSE_BATCHNORM=0 leaves the symbol as it is.
"""
import os

import mxnet as mx

from .view import Graph, int_tuple

FUSE_ENV = "IGC_FUSE_BATCHNORM"


def _fusable(graph, conv):
    """The BatchNormApply node that only IGCConv node `conv` reads, as its data, when the conv
    takes the fusion (not pointwise, no output activation, no input BatchNorm yet); else None."""
    attrs = graph.attrs(conv)
    if graph.op(conv) != "IGCConv" or "act" in attrs or "in_act" in attrs:
        return None
    if int_tuple(attrs.get("kernel")) == (1, 1):
        return None
    entry = graph.nodes[conv]["inputs"][0]
    apply = entry[0]
    if graph.op(apply) != "BatchNormApply" or entry[1] != 0:
        return None
    if graph.readers_of((apply, 0), ignore=()) != [conv]:
        return None
    return apply


def fuse_input_batchnorms(symbol):
    """`symbol` with every BatchNormApply -> IGCConv pair (the apply read by nothing else) as one
    IGCConv with in_act; the symbol itself where there is none or $IGC_FUSE_BATCHNORM=0."""
    if os.environ.get(FUSE_ENV, "1") == "0":
        return symbol
    graph = Graph(symbol)
    pairs = {}
    for i in range(len(graph.nodes)):
        apply = _fusable(graph, i)
        if apply is not None:
            pairs[i] = apply
    if not pairs:
        return symbol
    applies = set(pairs.values())

    def special(i, node, entry):
        if i in applies:
            return []  # read by its convolution alone, which now applies it
        if i not in pairs:
            return None
        apply = graph.nodes[pairs[i]]
        x, gamma, beta, mean, invstd = (entry(e) for e in apply["inputs"])
        rest = [entry(e) for e in node["inputs"][1:]]
        attrs = dict(node.get("attrs", {}), in_act=graph.attrs(pairs[i]).get("act", "none"))
        return [mx.sym.IGCConv(x, gamma, beta, mean, invstd, *rest, name=node["name"], **attrs)]

    return graph.rebuild(special)
