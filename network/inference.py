"""Inference-graph rewrites: `optimize_for_inference(symbol, arg_params, aux_params)`.

In inference a BatchNorm is a per-channel affine map with the moving statistics, so:
- every BatchNorm (MXNet's, or the plugin's BatchNormMoments -> BatchNorm -> BatchNormApply of
  `layers.batchnorm(native=True)`) whose input is a Convolution or IGCConv output read by nothing
  else folds into that convolution: weight * scale per output filter, bias = shift (+ bias *
  scale); the fused activation becomes clip (ReLU6) or Activation (ReLU) after it;
- one that cannot fold becomes MXNet's BatchNorm(use_global_stats=True) over the same
  parameters.
The result computes the training graph's inference outputs (up to float rounding) and loads
the same parameter names, plus a `{conv}_bias` per folded convolution; an IGCConv without
permutation becomes the equivalent Convolution. IGCV3's Reorder (expansion conv -> Reorder ->
depthwise conv -> ReLU6 -> 1x1 group conv) vanishes: the expansion runs as g*g groups over its
input repeated g times, so that each linear group's channels are contiguous, and the order inside
the groups moves into the depthwise and linear weights (`_remove_interleaves`). Graphs with
nothing to rewrite come back equivalent (rebuilt node by node).

On the CPU (device='cpu', fuse_blocks=True, float32 weights) every folded IGCV3 / MobileNetV2
block (expansion conv -> [Reorder] -> depthwise conv -> ReLU6 -> linear conv [-> identity add])
becomes first one `IGCBlock` of the plugin over the same weights (`_fuse_blocks`): its kernel
keeps the expanded tensor in cache-sized bands and reads the permutation as an index table, so
it needs neither the repeated input nor oneDNN's layout conversions. `fuse_blocks=False` (the
ONNX exporter's choice) or a GPU keeps stock MXNet ops only.
"""

import mxnet as mx
import numpy as np

from .block_fusion import fuse_blocks as _fuse_blocks
from .graph_json import Graph as _Graph
from .graph_json import is_true as _is_true
from .graph_json import stock_node
from .graph_json import to_numpy as _to_numpy
from .layers import DEVICES, check_choice, runs_on

_CONVS = ("Convolution", "IGCConv")
_ACT = {"relu": ("Activation", {"act_type": "relu"}), "relu6": ("clip", {"a_min": 0, "a_max": 6})}


def _batchnorm_sites(graph):
    """{output node id: site} for every BatchNorm; a site names the normalised input entry, the
    parameter names, eps, fix_gamma, the fused activation and the nodes that disappear."""
    sites = {}
    for i, node in enumerate(graph.nodes):
        if node["op"] == "BatchNormApply":
            x, gamma, beta, mean_entry, _ = node["inputs"]
            stats_id = mean_entry[0]
            stats = graph.nodes[stats_id]
            stop_id = stats["inputs"][0][0]
            moments_id = graph.nodes[stop_id]["inputs"][0][0]
            act = node.get("attrs", {}).get("act", "none")
            sites[i] = dict(x=tuple(x[:2]), bn=stats, act=None if act == "none" else act,
                            params=[graph.name(e) for e in stats["inputs"][1:5]],
                            gone={stats_id, stop_id, moments_id})
        elif node["op"] == "BatchNorm":
            if graph.nodes[node["inputs"][0][0]]["op"] == "BlockGrad":
                continue  # the statistics node of a plugin BatchNorm
            sites[i] = dict(x=tuple(node["inputs"][0][:2]), bn=node, act=None,
                            params=[graph.name(e) for e in node["inputs"][1:5]], gone=set())
    return sites


def _scale_shift(site, params):
    gamma, beta, mean, var = (params[n] for n in site["params"])
    attrs = site["bn"].get("attrs", {})
    eps = float(attrs.get("eps", 1e-3))
    if _is_true(attrs.get("fix_gamma", "True")):
        gamma = np.ones_like(gamma)
    scale = gamma / np.sqrt(var + eps)
    return scale, beta - mean * scale


def _stored_filter_order(attrs, filters):
    """Index into the stored output channels for each logical filter of a conv."""
    if not _is_true(attrs.get("interleave", "False")):
        return np.arange(filters)
    groups = int(attrs.get("num_group", "1"))
    per_group = filters // groups
    f = np.arange(filters)
    return (f % per_group) * groups + f // per_group


def _conv(op, inputs, name, attrs):
    """A convolution node; an IGCConv without permutation becomes MXNet's Convolution (same
    attributes and weight layout): IGCConv's edge is in training (forward + backward), while in
    inference oneDNN's kernels measured faster (igcv3 batch 1: 19.8 vs 23.5 ms, 1 thread)."""
    if op == "IGCConv" and not _is_true(attrs.get("interleave", "False")):
        op, attrs = "Convolution", {k: v for k, v in attrs.items() if k != "interleave"}
    return getattr(mx.sym, op)(*inputs, name=name, **attrs)


def optimize_for_inference(symbol, arg_params, aux_params, fold_batchnorm=True,
                           fuse_blocks=True, device="cpu"):
    """(symbol, arg_params, aux_params) for inference on `device` ('cpu' or 'gpu'); see the
    module docstring. fold_batchnorm=False keeps every BatchNorm (as MXNet's,
    use_global_stats=True) unfolded; fuse_blocks=False (or a GPU) keeps the folded blocks as
    stock ops instead of the plugin's IGCBlock."""
    check_choice("device", device, DEVICES)
    graph = _Graph(symbol)
    params = _to_numpy({**arg_params, **aux_params})
    new_args, new_aux = dict(arg_params), dict(aux_params)
    sites = _batchnorm_sites(graph)
    gone, folded = set(), {}  # folded: conv node id -> (site output id, scale, shift)
    for out_id, site in sites.items():
        gone |= site["gone"]
        producer = graph.nodes[site["x"][0]]
        if (fold_batchnorm and producer["op"] in _CONVS
                and graph.readers_of(site["x"]) == [out_id]):
            folded[site["x"][0]] = (out_id, *_scale_shift(site, params))

    def rewritten(i, node, entry):
        if i in gone:
            return []
        op, name, attrs = node["op"], node["name"], dict(node.get("attrs", {}))
        if i in folded:
            _, scale, shift = folded[i]
            weight_name = graph.name(node["inputs"][1])
            weight = params[weight_name]
            order = _stored_filter_order(attrs, weight.shape[0])
            scale, shift = scale[order], shift[order]
            bias = shift
            if not _is_true(attrs.get("no_bias", "False")):
                old_bias = params[graph.name(node["inputs"][2])]
                bias = old_bias * scale + shift
            new_args[weight_name] = mx.nd.array(weight * scale.reshape((-1,) + (1,) * 3),
                                                dtype=weight.dtype)
            new_args[f"{name}_bias"] = mx.nd.array(bias, dtype=weight.dtype)
            attrs["no_bias"] = "False"
            inputs = [entry(node["inputs"][0]), mx.sym.var(weight_name),
                      mx.sym.var(f"{name}_bias")]
            return [_conv(op, inputs, name, attrs)]
        if i in sites:
            site = sites[i]
            x = entry(site["x"])
            if site["x"][0] in folded:
                out = x
            else:
                bn_attrs = {k: v for k, v in site["bn"].get("attrs", {}).items()
                            if k not in ("output_mean_var", "use_global_stats")}
                out = mx.sym.BatchNorm(x, *(mx.sym.var(p) for p in site["params"]),
                                       use_global_stats=True, name=site["bn"]["name"],
                                       **bn_attrs)
            if site["act"]:
                act_op, act_attrs = _ACT[site["act"]]
                out = getattr(mx.sym, act_op)(out, name=name, **act_attrs)
            return [out]
        if op == "IGCConv":
            return [_conv(op, [entry(e) for e in node["inputs"]], name, attrs)]
        return None

    out = graph.rebuild(rewritten)
    if fold_batchnorm and fuse_blocks and runs_on("IGCBlock", device):
        out = _fuse_blocks(out, new_args)
    out = _remove_interleaves(out, new_args)
    keep_args, keep_aux = set(out.list_arguments()), set(out.list_auxiliary_states())
    return (out, {k: v for k, v in new_args.items() if k in keep_args},
            {k: v for k, v in new_aux.items() if k in keep_aux})


def _interleave_sites(graph):
    """IGCV3's expansion conv (g groups) -> Reorder(g) -> depthwise conv -> per-channel
    activation -> 1x1 conv with g groups, each read only by the next: {Reorder id: node ids}."""
    sites = {}
    for r, node in enumerate(graph.nodes):
        if node["op"] != "Reorder":
            continue
        g = int(node["attrs"]["branch_factor"])
        e = node["inputs"][0][0]
        exp = graph.nodes[e]
        d = graph.only_reader(r, ("Convolution",))
        a = d is not None and graph.only_reader(d, ("clip",))
        lin = a and graph.only_reader(a, ("Convolution",))
        if not lin or exp["op"] != "Convolution" or graph.readers_of((e, 0)) != [r]:
            continue
        channels = int(exp["attrs"]["num_filter"])
        k = channels // g
        if (int(exp["attrs"].get("num_group", "1")) == g and k % g == 0
                and int(graph.nodes[d]["attrs"].get("num_group", "1")) == channels
                and int(graph.nodes[lin]["attrs"].get("num_group", "1")) == g
                and graph.nodes[lin]["attrs"]["kernel"].replace(" ", "") == "(1,1)"):
            sites[r] = dict(exp=e, dw=d, act=a, lin=lin, g=g, k=k)
    return sites


def _interleave_orders(g, k):
    """For the rewritten expansion's channel q: the expansion filter e(q) it computes, the
    position p(q) it had after Reorder(g), and the linear conv's in-group input index it had."""
    h, i, j = np.meshgrid(np.arange(g), np.arange(g), np.arange(k // g), indexing="ij")
    filters = (i * k + h * (k // g) + j).ravel()
    positions = ((h * (k // g) + j) * g + i).ravel()
    in_group = (g * j + i).ravel()[:k]  # the same in every linear group
    return filters, positions, in_group


def _remove_interleaves(symbol, args):
    """Removes IGCV3's Reorder: the channels each linear group reads are made contiguous by
    running the expansion as g*g groups over the input repeated g times (group h*g + i computes
    the filters of expansion group i that linear group h reads), and the order inside each group
    moves into the depthwise and linear weights. Updates `args` in place."""
    graph = _Graph(symbol)
    sites = _interleave_sites(graph)
    if not sites:
        return symbol
    params = _to_numpy(args)
    by_node = {}
    for r, site in sites.items():
        filters, positions, in_group = _interleave_orders(site["g"], site["k"])
        by_node[site["exp"]] = ("exp", site, filters)
        by_node[site["dw"]] = ("dw", site, positions)
        by_node[site["lin"]] = ("lin", site, in_group)

    def names(node):
        return [graph.name(e) for e in node["inputs"][1:]]

    def rewritten(i, node, entry):
        if i in sites:
            return [entry(node["inputs"][0])]  # the permutation is gone
        if i not in by_node:
            return None
        inputs, attrs = [entry(e) for e in node["inputs"]], dict(node.get("attrs", {}))
        role, site, order = by_node[i]
        g = site["g"]
        if role == "lin":
            weight = params[names(node)[0]]
            per_group = weight.shape[0] // g
            new = np.empty_like(weight)
            for h in range(g):
                rows = slice(h * per_group, (h + 1) * per_group)
                new[rows][:, :] = weight[rows][:, order]
            args[names(node)[0]] = mx.nd.array(new, dtype=new.dtype)
        else:
            for param in names(node):
                args[param] = mx.nd.array(params[param][order], dtype=params[param].dtype)
        if role == "exp":
            inputs[0] = mx.sym.concat(*([inputs[0]] * g), dim=1, name=f"{node['name']}_repeat")
            attrs["num_group"] = str(g * g)
        return stock_node(node, inputs, attrs)

    return graph.rebuild(rewritten)
