"""The one BatchNorm rewrite for inference, where a BatchNorm is a per-channel affine map with
the moving statistics.

Every BatchNorm (MXNet's, or the plugin's BatchNormMoments -> BatchNorm -> BatchNormApply of
`layers.batchnorm(native=True)`) folds into the convolution that computes its input: directly,
through channel permutations in between (a Reorder or the pure-symbol chain, which then stay)
and through IGCConv's own interleave. The per-channel scale and shift are carried back through
the permutations onto the convolution's filters: weight * scale per filter, bias = shift
(+ bias * scale). The plugin BatchNorm's fused activation becomes clip (ReLU6) or Activation
(ReLU) after it. A BatchNorm with no such convolution (or with fold=False) becomes MXNet's
BatchNorm(use_global_stats=True) over the same parameters. An IGCConv without interleave becomes
the equivalent Convolution, and an IGCConv's input permutation (input_branches) a Reorder before
it.
"""
import mxnet as mx
import numpy as np

from .view import is_true, permutation_source

CONVS = ("Convolution", "IGCConv")
_ACT = {"relu": ("Activation", {"act_type": "relu"}), "relu6": ("clip", {"a_min": 0, "a_max": 6})}


def batchnorm_sites(graph):
    """{output node id: site} for every BatchNorm; a site names the normalised input entry, the
    BatchNorm node with the parameters, the fused activation and the nodes that disappear."""
    sites = {}
    for i, node in enumerate(graph.nodes):
        if node["op"] == "BatchNormApply":
            x, _, _, mean_entry, _ = node["inputs"]
            stats_id = mean_entry[0]
            stop_id = graph.nodes[stats_id]["inputs"][0][0]
            act = graph.attrs(i).get("act", "none")
            sites[i] = dict(x=tuple(x[:2]), bn=stats_id, act=None if act == "none" else act,
                            gone={stats_id, stop_id, graph.nodes[stop_id]["inputs"][0][0]})
        elif node["op"] == "BatchNorm" and graph.op(node["inputs"][0][0]) != "BlockGrad":
            sites[i] = dict(x=tuple(node["inputs"][0][:2]), bn=i, act=None, gone=set())
    return sites


def scale_shift(graph, bn, params):
    """(scale, shift) of BatchNorm node `bn` in inference: y = scale * x + shift per channel."""
    gamma, beta, mean, var = (params[n] for n in graph.input_names(bn)[1:5])
    attrs = graph.attrs(bn)
    if is_true(attrs.get("fix_gamma"), True):  # MXNet's default: gamma treated as 1
        gamma = np.ones_like(gamma)
    scale = gamma / np.sqrt(var + float(attrs.get("eps", 1e-3)))
    return scale, beta - mean * scale


def fold_target(graph, x, reader):
    """(conv node id, order) when node x, read only by `reader`, is a convolution or a chain
    of permutations of one, each read only by the next: channel c of x is filter order[c]."""
    groups = []
    while graph.readers_of((x, 0)) == [reader]:
        found = graph.permutation(x)
        if found is None:
            break
        groups.append(found[0])
        x, reader = found[1], found[2]
    else:
        return None
    if graph.op(x) not in CONVS or graph.attrs(x).get("act", "none") != "none":
        return None  # a fused activation sits between the conv and the BatchNorm
    if graph.op(x) == "IGCConv" and is_true(graph.attrs(x).get("interleave")):
        groups.append(int(graph.attrs(x).get("num_group", 1)))
    channels = int(graph.attrs(x)["num_filter"])
    order = np.arange(channels)
    for g in groups:
        order = permutation_source(channels, g)[order]
    return x, order


def fold_batchnorms(graph, params, fold=True):
    """(special, new_args) for graph.rebuild: every BatchNorm site folded (see the module doc),
    new_args the changed and new convolution weights."""
    sites = batchnorm_sites(graph)
    gone, folded, new_args = set(), {}, {}  # folded: conv node id -> (scale, shift)
    for out_id, site in sites.items():
        gone |= site["gone"]
        target = fold and site["x"][1] == 0 and fold_target(graph, site["x"][0], out_id)
        if target:
            conv, order = target
            folded[conv] = tuple(_by_filter(v, order)
                                 for v in scale_shift(graph, site["bn"], params))
            site["folded"] = True

    def special(i, node, entry):
        if i in gone:
            return []
        if i in folded:
            return [_folded_conv(graph, i, node, entry, params, *folded[i], new_args)]
        if i in sites:
            return [_inference_batchnorm(graph, sites[i], node, entry)]
        if node["op"] == "IGCConv":
            return [_conv(node["op"], [entry(e) for e in node["inputs"]], node["name"],
                          dict(node.get("attrs", {})))]
        return None

    return special, new_args


def _by_filter(values, order):
    out = np.empty_like(values)
    out[order] = values
    return out


def _folded_conv(graph, i, node, entry, params, scale, shift, new_args):
    attrs = dict(node.get("attrs", {}))
    names = graph.input_names(i)
    weight = params[names[1]]
    bias = shift
    if not is_true(attrs.get("no_bias")):
        bias = params[names[2]] * scale + shift
    new_args[names[1]] = mx.nd.array(weight * scale.reshape((-1,) + (1,) * (weight.ndim - 1)),
                                     dtype=weight.dtype)
    new_args[f"{node['name']}_bias"] = mx.nd.array(bias, dtype=weight.dtype)
    attrs["no_bias"] = "False"
    inputs = [entry(node["inputs"][0]), mx.sym.var(names[1]), mx.sym.var(f"{node['name']}_bias")]
    return _conv(node["op"], inputs, node["name"], attrs)


def _inference_batchnorm(graph, site, node, entry):
    out = entry(site["x"])
    if not site.get("folded"):
        bn = site["bn"]
        attrs = {k: v for k, v in graph.attrs(bn).items()
                 if k not in ("output_mean_var", "use_global_stats")}
        out = mx.sym.BatchNorm(out, *(mx.sym.var(p) for p in graph.input_names(bn)[1:5]),
                               use_global_stats=True, name=graph.nodes[bn]["name"], **attrs)
    if site["act"]:
        act_op, act_attrs = _ACT[site["act"]]
        out = getattr(mx.sym, act_op)(out, name=node["name"], **act_attrs)
    return out


def _conv(op, inputs, name, attrs):
    """A convolution node; an IGCConv without interleave becomes MXNet's Convolution (same
    attributes and weight layout): IGCConv's edge is in training (its backward), oneDNN's
    inference kernels are at least as fast. An IGCConv's input permutation (input_branches)
    becomes a Reorder node `{name}_input_permute` before it, the form that the block fusion,
    the permutation removal and the ONNX writer read."""
    branches = int(attrs.pop("input_branches", 1)) if op == "IGCConv" else 1
    if branches > 1:
        inputs = [mx.sym.Reorder(inputs[0], branch_factor=branches, name=f"{name}_input_permute"),
                  *inputs[1:]]
    if op == "IGCConv" and not is_true(attrs.get("interleave")):
        act = attrs.get("act", "none")
        attrs = {k: v for k, v in attrs.items() if k not in ("interleave", "act")}
        conv = mx.sym.Convolution(*inputs, name=name, **attrs)
        # act='relu6' (a graph optimize_for_inference made): the clip it fused, as a node
        return conv if act == "none" else mx.sym.clip(conv, 0, 6, name=f"{name}_relu6")
    return getattr(mx.sym, op)(*inputs, name=name, **attrs)
