"""IGCBlock fusion of folded IGCV3 / MobileNetV2 blocks (see src/operator/igc_block.h)."""
import mxnet as mx
import numpy as np

from .view import Graph, int_tuple, is_true


def _fusable_conv(node, kernel, stride=(1,)):
    """For an NCHW Convolution with a bias, the given square kernel, padding kernel // 2 and
    one of the given strides: its stride, else None."""
    attrs = node.get("attrs", {})
    if node["op"] != "Convolution" or is_true(attrs.get("no_bias")):
        return None
    if attrs.get("layout", "NCHW") not in ("NCHW", "None"):
        return None
    pad, dilate = int_tuple(attrs.get("pad"), (0, 0)), int_tuple(attrs.get("dilate"), (1, 1))
    strides = int_tuple(attrs.get("stride"), (1, 1))
    if (int_tuple(attrs.get("kernel")) != (kernel, kernel) or pad != (kernel // 2,) * 2
            or dilate not in ((1, 1), ()) or len(set(strides)) != 1 or strides[0] not in stride):
        return None
    return strides[0]


def _is_relu6(node):
    """Whether `node` is clip(0, 6)."""
    return node["op"] == "clip" and [float(node.get("attrs", {}).get(k, "nan"))
                                     for k in ("a_min", "a_max")] == [0.0, 6.0]


def _all_float32(args, names):
    """Whether every parameter in `names` is float32 (a missing one counts as float64)."""
    return all(np.dtype(getattr(args.get(p), "dtype", None) or np.float64) == np.float32
               for p in names)


def _block_sites(graph, args):
    """Folded IGCV3 / MobileNetV2 blocks: 1x1 expansion conv (g groups) -> [permutation(g)] ->
    3x3 depthwise conv -> clip(0, 6) -> 1x1 linear conv (g groups) -> [elemwise_add with the
    block input], each node read only by the next and every weight float32:
    {output node id: site}."""
    def weights(node):
        return [graph.name(e) for e in node["inputs"][1:]]

    sites = {}
    for e, exp in enumerate(graph.nodes):
        if _fusable_conv(exp, 1) is None:
            continue
        g = int(exp["attrs"].get("num_group", "1"))
        permutation = graph.permutation_after(e)
        interleave = permutation is not None and g > 1
        if permutation is not None and permutation[0] != g:
            continue
        dw = graph.only_reader(permutation[1] if permutation else e, ("Convolution",))
        if dw is None:
            continue
        channels = int(exp["attrs"]["num_filter"])
        stride = _fusable_conv(graph.nodes[dw], 3, stride=(1, 2))
        if stride is None or int(graph.nodes[dw]["attrs"].get("num_group", "1")) != channels:
            continue
        act = graph.only_reader(dw, ("clip",))
        if act is None or not _is_relu6(graph.nodes[act]):
            continue
        lin = graph.only_reader(act, ("Convolution",))
        if (lin is None or _fusable_conv(graph.nodes[lin], 1) is None
                or int(graph.nodes[lin]["attrs"].get("num_group", "1")) != g):
            continue
        params = weights(exp) + weights(graph.nodes[dw]) + weights(graph.nodes[lin])
        if not _all_float32(args, params):
            continue
        data = tuple(exp["inputs"][0][:2])
        out, residual = lin, False
        add = graph.only_reader(lin, ("elemwise_add", "_plus", "_Plus"))
        if add is not None and data in [tuple(x[:2]) for x in graph.nodes[add]["inputs"]]:
            out, residual = add, True
        filters = int(graph.nodes[lin]["attrs"]["num_filter"])
        sites[out] = dict(data=data, params=params, expanded=channels, num_filter=filters,
                          num_group=g, stride=stride, interleave=interleave, residual=residual,
                          name=_block_name(exp["name"], graph.nodes[lin]["name"]))
    return sites


def _block_name(first, last):
    prefix = first[:next((i for i, (a, b) in enumerate(zip(first, last)) if a != b),
                         min(len(first), len(last)))].rstrip("-_")
    return f"{prefix or first}-fused"


PANEL = 16  # filters per panel of IGCBlock's packed 1x1 weights (src/operator/igc_block.h)


def pack_1x1(weight, groups):
    """A 1x1 conv weight (F, K, 1, 1) with `groups` groups in IGCBlock's packed layout: per
    group, per panel of 16 filters (the last one 8 when F / groups is an odd multiple of 8), the
    K x width transpose of the panel's rows; one flat float32 array of F * K values."""
    filters, inputs = weight.shape[:2]
    w = np.asarray(weight, dtype=np.float32).reshape(groups, filters // groups, inputs)
    return np.concatenate([w[g, f0:f0 + PANEL].T.ravel() for g in range(groups)
                           for f0 in range(0, filters // groups, PANEL)])


def packable(site):
    """Whether IGCBlock's packed (channel-blocked) kernel takes the site: multiples of 8 expanded
    and output channels per group."""
    return (site["expanded"] // site["num_group"]) % 8 == 0 and (
        site["num_filter"] // site["num_group"]) % 8 == 0


def fuse_blocks(symbol, args, pack=True):
    """Each site of `_block_sites` becomes one IGCBlock over the same weights (see
    src/operator/igc_block.h): the expanded tensor then lives only in cache-sized bands, and the
    permutation is an index table. With `pack` (and a `packable` site) the two 1x1 weights are
    added to `args` in the packed layout as `{weight}_packed`, which the block reads instead (its
    channel-blocked kernel)."""
    graph = Graph(symbol)
    sites = _block_sites(graph, args)
    if not sites:  # no new block; an optimized graph's own blocks may still follow a stem
        return _plain_convs_before_blocks(symbol, args)
    block_op = getattr(mx.sym, "IGCBlock")

    def fused(i, node, entry):
        if i not in sites:
            return None
        site = sites[i]
        params, packed = list(site["params"]), pack and packable(site)
        if packed:
            for j in (0, 4):  # the expansion and the linear conv weights
                name = f"{params[j]}_packed"
                weight = args[params[j]]
                weight = weight.asnumpy() if hasattr(weight, "asnumpy") else weight
                args[name] = mx.nd.array(pack_1x1(weight, site["num_group"]), dtype=np.float32)
                params[j] = name
        # The weights carry their shapes: MXNet 1.9 sizes the buffer of input shapes it hands a
        # plugin op by the sum of their ranks, counting an unknown shape as -1.
        weights = [mx.sym.var(p, shape=tuple(args[p].shape)) for p in params]
        return [block_op(entry(site["data"]), *weights, expanded=site["expanded"],
                         num_filter=site["num_filter"], num_group=site["num_group"],
                         stride=site["stride"], interleave=site["interleave"],
                         residual=site["residual"], packed_weights=packed, name=site["name"])]

    return _plain_convs_before_blocks(graph.rebuild(fused), args)


def _plain_convs_before_blocks(symbol, args):
    """Each Convolution of the graph's input -> clip(0, 6) that only IGCBlocks read (the stem)
    becomes one IGCConv with act='relu6' over the same weights. A oneDNN convolution writes a
    blocked layout (NHWC or 8- / 16-channel blocks), which MXNet converts to plain NCHW before a
    plugin op reads it: for the 3 -> 32 stem at 112x112 that conversion alone took longer than
    the conv itself."""
    graph = Graph(symbol)
    convs = {}  # clip node id -> conv node id
    for c, node in enumerate(graph.nodes):
        if not _is_relu6(node):
            continue
        conv = node["inputs"][0][0]
        readers = graph.readers_of((c, 0))
        if (graph.op(conv) != "Convolution" or graph.readers_of((conv, 0)) != [c]
                or not readers or any(r == "head" or graph.op(r) != "IGCBlock" for r in readers)):
            continue
        cattrs = graph.attrs(conv)
        kernel = int_tuple(cattrs.get("kernel"))
        if (is_true(cattrs.get("no_bias")) or cattrs.get("layout", "NCHW") not in ("NCHW", "None")
                or len(kernel) != 2 or int_tuple(cattrs.get("dilate"), (1, 1)) not in ((1, 1), ())
                or not _all_float32(args, graph.input_names(conv)[1:])
                or graph.op(graph.nodes[conv]["inputs"][0][0]) != "null"):
            continue
        convs[c] = conv
    if not convs:
        return symbol
    replaced = set(convs.values())
    conv_op = getattr(mx.sym, "IGCConv")

    def plain(i, node, entry):
        if i in replaced:
            return []
        if i not in convs:
            return None
        conv = graph.nodes[convs[i]]
        attrs = conv.get("attrs", {})
        return [conv_op(*[entry(e) for e in conv["inputs"]], num_filter=int(attrs["num_filter"]),
                        kernel=int_tuple(attrs["kernel"]),
                        stride=int_tuple(attrs.get("stride"), (1, 1)) or (1, 1),
                        pad=int_tuple(attrs.get("pad"), (0, 0)) or (0, 0),
                        num_group=int(attrs.get("num_group", "1")), act="relu6",
                        name=conv["name"])]

    return graph.rebuild(plain)
