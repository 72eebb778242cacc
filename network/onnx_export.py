"""ONNX export of the inference graph, written over the symbol JSON with the `onnx` helper API
(MXNet 1.9's own `mx.onnx.export_model` has no converter for `Reorder` and rejects the reshape
codes -2/-3/-4 of the pure-symbol permutation).

- Every permutation (a `Reorder` node, the output of `IGCConv` with interleave, or a pure-symbol
  Reshape/SwapAxis chain) becomes Reshape (N, g, C/g, H, W) -> Transpose -> Reshape (N, C, H, W)
  with explicit sizes; `IGCConv` is a Conv followed by that permutation.
- The batch dimension is dynamic (`N`); the other input sizes are the ones exported.
- `fold_bn=True` folds each inference BatchNorm into the convolution that feeds it, also across a
  permutation in between (the IGCV1 unit's conv2 -> Reorder -> BN): the BN's per-channel scale
  and shift are permuted back onto the convolution's output channels.
- Input `data` (N, 3, H, W) float32; output `probabilities` (N, classes): SoftmaxOutput is a
  Softmax over the classes.
"""
import json

import numpy as np

from .graph_json import int_tuple as _tuple

OPSET = 17
INPUT_NAME, OUTPUT_NAME = "data", "probabilities"
_ADD_OPS = ("elemwise_add", "_Plus", "_plus", "broadcast_add", "_add")
_NATIVE_BATCHNORM = ("BatchNormMoments", "BatchNormApply")
_ACTIVATIONS = {"relu": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh", "softrelu": "Softplus"}




def _bool(text, default):
    return default if text is None else text.strip() in ("True", "true", "1")


def _float(text, default):
    return default if text is None else float(text)


def channel_source(channels, groups):
    """src[c']: the input channel that a permutation with `groups` branches moves to c'
    (out[:, j*g + i] = in[:, i*(C/g) + j])."""
    return np.arange(channels).reshape(groups, channels // groups).T.reshape(-1)


class _Graph:
    """The MXNet graph with its inferred shapes and consumer counts."""

    def __init__(self, symbol, data_shape):
        graph = json.loads(symbol.tojson())
        self.nodes = graph["nodes"]
        self.heads = graph["heads"]
        internals = symbol.get_internals()
        _, out_shapes, _ = internals.infer_shape(data=tuple(data_shape))
        if out_shapes is None:
            raise ValueError(f"cannot infer the graph's shapes for input {tuple(data_shape)}")
        self.shapes = dict(zip(internals.list_outputs(), (tuple(s) for s in out_shapes)))
        self.consumers = [0] * len(self.nodes)
        for node in self.nodes:
            for i in node["inputs"]:
                self.consumers[i[0]] += 1
        for head in self.heads:
            self.consumers[head[0]] += 1

    def attrs(self, index):
        return self.nodes[index].get("attrs", self.nodes[index].get("attr", {})) or {}

    def shape(self, index):
        node = self.nodes[index]
        if node["op"] == "null":
            return self.shapes[node["name"]]
        return self.shapes[node["name"] + "_output"]

    def input(self, index, k=0):
        return self.nodes[index]["inputs"][k][0]

    def permutation_groups(self, index):
        """g when node `index` ends a channel permutation that starts at `start`: (g, start) for
        a Reorder or the last Reshape of a Reshape -> SwapAxis(1, 2) -> Reshape chain with
        shapes (N, g, C/g, ...) -> (N, C/g, g, ...) -> (N, C, ...); else None."""
        node = self.nodes[index]
        if node["op"] == "Reorder":
            return int(self.attrs(index)["branch_factor"]), self.input(index)
        if node["op"] not in ("Reshape", "reshape"):
            return None
        swap = self.input(index)
        if self.nodes[swap]["op"] not in ("SwapAxis", "swapaxes"):
            return None
        split = self.input(swap)
        if self.nodes[split]["op"] not in ("Reshape", "reshape"):
            return None
        start = self.input(split)
        before, mid, after = self.shape(start), self.shape(split), self.shape(index)
        axes = {_tuple(self.attrs(swap).get("dim1"), (0,))[0],
                _tuple(self.attrs(swap).get("dim2"), (0,))[0]}
        if (axes == {1, 2} and len(before) >= 2 and before == after and len(mid) == len(before) + 1
                and mid[0] == before[0] and mid[1] * mid[2] == before[1]
                and mid[3:] == before[2:] and self.consumers[split] == 1
                and self.consumers[swap] == 1):
            return mid[1], start
        return None


class _Emitter:
    def __init__(self, graph, arg_params, aux_params):
        import onnx
        from onnx import helper, numpy_helper
        self.onnx, self.helper, self.numpy_helper = onnx, helper, numpy_helper
        self.graph = graph
        self.params = {**arg_params, **aux_params}
        self.nodes, self.initializers, self.names = [], [], set()

    def constant(self, name, array):
        if name not in self.names:
            self.names.add(name)
            self.initializers.append(self.numpy_helper.from_array(np.ascontiguousarray(array),
                                                                  name))
        return name

    def param(self, name):
        value = self.params[name]
        return np.asarray(value.asnumpy() if hasattr(value, "asnumpy") else value, np.float32)

    def node(self, op, inputs, name, **attrs):
        self.nodes.append(self.helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    def permute(self, data, shape, groups, name):
        channels, rest = shape[1], list(shape[2:])
        split = self.constant(f"{name}_split_shape",
                              np.array([0, groups, channels // groups] + rest, np.int64))
        merge = self.constant(f"{name}_merge_shape", np.array([0, channels] + rest, np.int64))
        data = self.node("Reshape", [data, split], f"{name}_split")
        perm = [0, 2, 1] + list(range(3, len(shape) + 1))
        data = self.node("Transpose", [data], f"{name}_swap", perm=perm)
        return self.node("Reshape", [data, merge], name)


def _fold_targets(graph):
    """{conv node: (bn node, permutation groups or None)} and the set of folded BN nodes."""
    targets = {}
    for index, node in enumerate(graph.nodes):
        if node["op"] != "BatchNorm" or int(graph.attrs(index).get("axis", 1)) != 1:
            continue
        producer, groups = graph.input(index), None
        if graph.consumers[producer] != 1:
            continue
        permutation = graph.permutation_groups(producer)
        if permutation is not None:
            groups, producer = permutation
            if graph.consumers[producer] != 1:
                continue
        op = graph.nodes[producer]["op"]
        if op == "IGCConv" and _bool(graph.attrs(producer).get("interleave"), False):
            if groups is not None:
                continue
            groups = int(graph.attrs(producer).get("num_group", 1))
        elif op not in ("Convolution", "IGCConv"):
            continue
        targets[producer] = (index, groups)
    return targets


def _bn_affine(emitter, graph, index):
    """(scale, shift) of an inference BatchNorm node: y = scale * x + shift per channel."""
    attrs = graph.attrs(index)
    names = [graph.nodes[i[0]]["name"] for i in graph.nodes[index]["inputs"]]
    gamma, beta, mean, var = (emitter.param(n) for n in names[1:5])
    if _bool(attrs.get("fix_gamma"), True):
        gamma = np.ones_like(gamma)
    scale = gamma / np.sqrt(var + _float(attrs.get("eps"), 1e-3))
    return scale, beta - mean * scale


def _convolution(emitter, graph, index, data, fold):
    attrs, node = graph.attrs(index), graph.nodes[index]
    names = [graph.nodes[i[0]]["name"] for i in node["inputs"]]
    weight = emitter.param(names[1])
    kernel = _tuple(attrs.get("kernel"))
    no_bias = _bool(attrs.get("no_bias"), False)
    bias = None if no_bias else emitter.param(names[2])
    interleave = node["op"] == "IGCConv" and _bool(attrs.get("interleave"), False)
    groups = int(attrs.get("num_group", 1))
    if index in fold:
        bn, perm_groups = fold[index]
        scale, shift = _bn_affine(emitter, graph, bn)
        if perm_groups is not None:
            src = channel_source(weight.shape[0], perm_groups)
            scale_c, shift_c = np.empty_like(scale), np.empty_like(shift)
            scale_c[src], shift_c[src] = scale, shift
            scale, shift = scale_c, shift_c
        weight = weight * scale.reshape(-1, *([1] * (weight.ndim - 1)))
        bias = shift if bias is None else bias * scale + shift
    inputs = [data, emitter.constant(f"{node['name']}_W", weight)]
    if bias is not None:
        inputs.append(emitter.constant(f"{node['name']}_B", bias.astype(np.float32)))
    pad = _tuple(attrs.get("pad"), (0,) * len(kernel)) or (0,) * len(kernel)
    name = node["name"] + ("_conv" if interleave else "")
    out = emitter.node("Conv", inputs, name, kernel_shape=list(kernel),
                       strides=list(_tuple(attrs.get("stride"), (1,) * len(kernel)) or
                                     (1,) * len(kernel)),
                       pads=list(pad) * 2, group=groups,
                       dilations=list(_tuple(attrs.get("dilate"), (1,) * len(kernel)) or
                                      (1,) * len(kernel)))
    if interleave:
        out = emitter.permute(out, graph.shape(index), groups, node["name"])
    return out


def _pooling(emitter, graph, index, data):
    attrs, name = graph.attrs(index), graph.nodes[index]["name"]
    pool = attrs.get("pool_type", "max")
    if pool not in ("max", "avg"):
        raise ValueError(f"ONNX export: Pooling {name}: pool_type {pool!r} is not supported")
    if _bool(attrs.get("global_pool"), False):
        return emitter.node("GlobalMaxPool" if pool == "max" else "GlobalAveragePool", [data],
                            name)
    kernel = _tuple(attrs.get("kernel"))
    extra = {}
    if pool == "avg":
        extra["count_include_pad"] = int(_bool(attrs.get("count_include_pad"), True))
    return emitter.node("MaxPool" if pool == "max" else "AveragePool", [data], name,
                        kernel_shape=list(kernel),
                        strides=list(_tuple(attrs.get("stride"), (1,) * len(kernel)) or
                                     (1,) * len(kernel)),
                        pads=list(_tuple(attrs.get("pad"), (0,) * len(kernel)) or
                                  (0,) * len(kernel)) * 2,
                        ceil_mode=int(attrs.get("pooling_convention", "valid") == "full"),
                        **extra)


def _reshape(emitter, graph, index, data):
    """An explicit-size Reshape to the inferred shape, the batch dimension kept dynamic."""
    name, shape = graph.nodes[index]["name"], graph.shape(index)
    batch = graph.shape(graph.input(index))[0]
    if shape[0] != batch:
        raise ValueError(f"ONNX export: Reshape {name} changes the batch dimension "
                         f"({batch} -> {shape[0]}); only per-sample reshapes are exported")
    target = emitter.constant(f"{name}_shape", np.array((0,) + shape[1:], np.int64))
    return emitter.node("Reshape", [data, target], name)


def _convert(emitter, graph, index, inputs, fold, folded_bn):
    node, attrs = graph.nodes[index], graph.attrs(index)
    op, name = node["op"], node["name"]
    if op in ("Convolution", "IGCConv"):
        return _convolution(emitter, graph, index, inputs[0], fold)
    if op == "BatchNorm":
        if index in folded_bn:
            return inputs[0]
        names = [graph.nodes[i[0]]["name"] for i in node["inputs"]]
        gamma, beta, mean, var = (emitter.param(n) for n in names[1:5])
        if _bool(attrs.get("fix_gamma"), True):  # MXNet's default: gamma treated as 1
            gamma = np.ones_like(gamma)
        arrays = [emitter.constant(f"{name}_{k}", v) for k, v in
                  (("scale", gamma), ("bias", beta), ("mean", mean), ("var", var))]
        return emitter.node("BatchNormalization", [inputs[0], *arrays], name,
                            epsilon=_float(attrs.get("eps"), 1e-3))
    if op == "Reorder":
        return emitter.permute(inputs[0], graph.shape(index), int(attrs["branch_factor"]), name)
    if op in ("Reshape", "reshape"):
        permutation = graph.permutation_groups(index)
        if permutation is not None:
            groups, start = permutation
            return emitter.permute(emitter.tensor_of[start], graph.shape(index), groups, name)
        return _reshape(emitter, graph, index, inputs[0])
    if op in ("SwapAxis", "swapaxes"):
        rank = len(graph.shape(index))
        perm = list(range(rank))
        a, b = (_tuple(attrs.get(k), (0,))[0] for k in ("dim1", "dim2"))
        perm[a], perm[b] = perm[b], perm[a]
        return emitter.node("Transpose", [inputs[0]], name, perm=perm)
    if op == "Activation":
        act = attrs.get("act_type")
        if act not in _ACTIVATIONS:
            raise ValueError(f"ONNX export: Activation {name}: act_type {act!r} not supported")
        return emitter.node(_ACTIVATIONS[act], [inputs[0]], name)
    if op == "clip":
        low = emitter.constant(f"{name}_min", np.array(float(attrs["a_min"]), np.float32))
        high = emitter.constant(f"{name}_max", np.array(float(attrs["a_max"]), np.float32))
        return emitter.node("Clip", [inputs[0], low, high], name)
    if op in _ADD_OPS:
        return emitter.node("Add", inputs[:2], name)
    if op == "Pooling":
        return _pooling(emitter, graph, index, inputs[0])
    if op in ("Flatten", "flatten"):
        return emitter.node("Flatten", [inputs[0]], name, axis=1)
    if op == "FullyConnected":
        data = inputs[0]
        if len(graph.shape(graph.input(index))) > 2:
            data = emitter.node("Flatten", [data], f"{name}_flatten", axis=1)
        names = [graph.nodes[i[0]]["name"] for i in node["inputs"]]
        gemm = [data, emitter.constant(f"{name}_W", emitter.param(names[1]))]
        if not _bool(attrs.get("no_bias"), False):
            gemm.append(emitter.constant(f"{name}_B", emitter.param(names[2])))
        return emitter.node("Gemm", gemm, name, transB=1)
    if op in ("SoftmaxOutput", "softmax", "SoftmaxActivation"):
        return emitter.node("Softmax", [inputs[0]], name, axis=1)
    if op in ("Concat", "concat"):  # optimize_for_inference's repeated IGCV3 expansion input
        return emitter.node("Concat", inputs, name, axis=int(attrs.get("dim", "1")))
    if op == "Dropout":
        return inputs[0]
    raise ValueError(f"ONNX export: no converter for op {op} (node {name})")


def to_onnx(symbol, arg_params, aux_params, data_shape, fold_bn=False, graph_name="igc"):
    """An onnx.ModelProto of `symbol` (ending in SoftmaxOutput) with the given weights, for
    input (N,) + data_shape; ValueError for an op without a converter."""
    ops = {node["op"] for node in json.loads(symbol.tojson())["nodes"]}
    if ops & set(_NATIVE_BATCHNORM):
        # The plugin's BatchNorm (BatchNormMoments -> BatchNorm -> BatchNormApply) has no ONNX
        # counterpart: in inference it is the affine map that optimize_for_inference turns
        # into a stock BatchNorm (or, with fold_bn, folds into the convolution before it).
        from .inference import optimize_for_inference
        symbol, arg_params, aux_params = optimize_for_inference(symbol, arg_params, aux_params,
                                                                fold_batchnorm=fold_bn,
                                                                fuse_blocks=False)
    graph = _Graph(symbol, (1,) + tuple(data_shape))
    if len(graph.heads) != 1:
        raise ValueError(f"ONNX export: the graph has {len(graph.heads)} outputs, expected 1")
    emitter = _Emitter(graph, arg_params, aux_params)
    fold = _fold_targets(graph) if fold_bn else {}
    folded_bn = {bn for bn, _ in fold.values()}
    emitter.tensor_of = {}
    # The split Reshape and SwapAxis of a pure-symbol permutation: its last Reshape emits it.
    interior = set()
    for index, node in enumerate(graph.nodes):
        if node["op"] in ("Reshape", "reshape") and graph.permutation_groups(index):
            swap = graph.input(index)
            interior.update((swap, graph.input(swap)))
    for index, node in enumerate(graph.nodes):
        if index in interior:
            continue
        if node["op"] == "null":
            if node["name"] == "data":
                emitter.tensor_of[index] = INPUT_NAME
            continue
        inputs = [emitter.tensor_of.get(i[0]) for i in node["inputs"]]
        emitter.tensor_of[index] = _convert(emitter, graph, index, inputs, fold, folded_bn)
    head = emitter.tensor_of[graph.heads[0][0]]
    helper, onnx = emitter.helper, emitter.onnx
    emitter.nodes.append(helper.make_node("Identity", [head], [OUTPUT_NAME], name=OUTPUT_NAME))
    classes = graph.shape(graph.heads[0][0])[1]
    model = helper.make_model(
        helper.make_graph(
            emitter.nodes, graph_name,
            [helper.make_tensor_value_info(INPUT_NAME, onnx.TensorProto.FLOAT,
                                           ["N"] + list(data_shape))],
            [helper.make_tensor_value_info(OUTPUT_NAME, onnx.TensorProto.FLOAT,
                                           ["N", classes])],
            emitter.initializers),
        opset_imports=[helper.make_opsetid("", OPSET)], producer_name="igc-mxnet")
    onnx.checker.check_model(model)
    return model
