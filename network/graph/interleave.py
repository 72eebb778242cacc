"""Removal of IGCV3's permutation once its BatchNorm is folded: expansion conv (g groups) ->
permutation(g) -> depthwise conv -> clip -> 1x1 conv with g groups becomes a permutation-free
graph. The expansion runs as g*g groups over its input repeated g times, so that the channels
each linear group reads are contiguous, and the order inside the groups moves into the
depthwise and linear weights."""
import mxnet as mx
import numpy as np

from .view import Graph, permutation_source, stock_node, to_numpy


def _sites(graph):
    """{permutation end id: site} for each expansion conv -> permutation -> depthwise conv ->
    clip -> 1x1 linear conv with g groups, each read only by the next."""
    sites = {}
    for e, exp in enumerate(graph.nodes):
        permutation = exp["op"] == "Convolution" and graph.permutation_after(e)
        if not permutation:
            continue
        g, end = permutation
        d = graph.only_reader(end, ("Convolution",))
        a = d is not None and graph.only_reader(d, ("clip",))
        lin = a and graph.only_reader(a, ("Convolution",))
        if not lin:
            continue
        channels = int(exp["attrs"]["num_filter"])
        k = channels // g
        if (int(exp["attrs"].get("num_group", "1")) == g and k % g == 0
                and int(graph.attrs(d).get("num_group", "1")) == channels
                and int(graph.attrs(lin).get("num_group", "1")) == g
                and graph.attrs(lin)["kernel"].replace(" ", "") == "(1,1)"):
            sites[end] = dict(exp=e, dw=d, lin=lin, g=g, k=k)
    return sites


def _orders(g, k):
    """For the rewritten expansion's channel q: the expansion filter it computes (linear group
    h reads, from each expansion group i, the k/g filters h*(k/g) ...: the (i, h) blocks
    transposed), the position it had after the permutation, and the linear conv's in-group
    input index it had (the same in every linear group)."""
    blocks = permutation_source(g * g, g)
    filters = (blocks[:, None] * (k // g) + np.arange(k // g)).ravel()
    positions = permutation_source(g * k, k)[filters]  # the inverse permutation
    return filters, positions, positions[:k]


def remove_interleaves(symbol, args):
    """The rewritten symbol (see the module doc); updates `args` in place."""
    graph = Graph(symbol)
    sites = _sites(graph)
    if not sites:
        return symbol
    params = to_numpy(args)
    by_node = {}
    for site in sites.values():
        filters, positions, in_group = _orders(site["g"], site["k"])
        by_node[site["exp"]] = ("exp", site, filters)
        by_node[site["dw"]] = ("dw", site, positions)
        by_node[site["lin"]] = ("lin", site, in_group)

    def rewritten(i, node, entry):
        if i in sites:
            return [entry((sites[i]["exp"], 0))]  # the permutation is gone
        if i not in by_node:
            return None
        inputs, attrs = [entry(e) for e in node["inputs"]], dict(node.get("attrs", {}))
        role, site, order = by_node[i]
        g, names = site["g"], graph.input_names(i)[1:]
        if role == "lin":
            weight = params[names[0]]
            per_group = weight.shape[0] // g
            new = np.empty_like(weight)
            for h in range(g):
                rows = slice(h * per_group, (h + 1) * per_group)
                new[rows] = weight[rows][:, order]
            args[names[0]] = mx.nd.array(new, dtype=new.dtype)
        else:
            for param in names:
                args[param] = mx.nd.array(params[param][order], dtype=params[param].dtype)
        if role == "exp":
            inputs[0] = mx.sym.concat(*([inputs[0]] * g), dim=1, name=f"{node['name']}_repeat")
            attrs["num_group"] = str(g * g)
        return stock_node(node, inputs, attrs)

    return graph.rebuild(rewritten)
