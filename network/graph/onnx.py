"""ONNX export of `optimize_for_inference(..., fuse_blocks=False)`'s graph: the inference graph
that scoring and prediction run, written op by op with the `onnx` helper API (one translation
per op, no rewriting of its own; MXNet 1.9's `mx.onnx.export_model` has no converter for
`Reorder` and rejects the reshape codes -2/-3/-4 of the pure-symbol permutation).

- `Reorder` becomes Reshape (N, g, C/g, H, W) -> Transpose -> Reshape (N, C, H, W) with explicit
  sizes, `IGCConv` a Conv followed by that permutation, every Reshape one with explicit sizes.
- The batch dimension is dynamic (`N`); height and width are too (`H`, `W`) when the graph is
  size-agnostic (global pooling before the classifier, no explicit-size Reshape), else they are
  the ones exported.
- `fold_bn=True` exports the graph with every BatchNorm folded; without it each BatchNorm is a
  BatchNormalization.
- Input `data` (N, 3, H, W) float32; output `probabilities` (N, classes): SoftmaxOutput is a
  Softmax over the classes.
"""
import json

import numpy as np
from mxnet.base import MXNetError

from .optimize import optimize_for_inference
from .view import Graph, int_tuple, is_true

OPSET = 17
INPUT_NAME, OUTPUT_NAME = "data", "probabilities"
_ACTIVATIONS = {"relu": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh", "softrelu": "Softplus"}
_CONVERTERS = {}


def converts(*ops):
    def register(function):
        for op in ops:
            _CONVERTERS[op] = function
        return function
    return register


class _Emitter:
    def __init__(self, graph, params):
        import onnx
        from onnx import helper, numpy_helper
        self.onnx, self.helper, self.numpy_helper = onnx, helper, numpy_helper
        self.graph, self.params = graph, params
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
        channels = shape[1]
        # The spatial sizes are read from the tensor, so one file serves any input size.
        spatial = self.node("Shape", [data], f"{name}_spatial", start=2)
        split = self.node("Concat", [self.constant(f"{name}_split_head", np.array(
            [0, groups, channels // groups], np.int64)), spatial], f"{name}_split_shape", axis=0)
        merge = self.node("Concat", [self.constant(f"{name}_merge_head", np.array(
            [0, channels], np.int64)), spatial], f"{name}_merge_shape", axis=0)
        data = self.node("Reshape", [data, split], f"{name}_split")
        perm = [0, 2, 1] + list(range(3, len(shape) + 1))
        data = self.node("Transpose", [data], f"{name}_swap", perm=perm)
        return self.node("Reshape", [data, merge], name)


def _spatial(attrs, key, kernel, fill):
    return list(int_tuple(attrs.get(key)) or (fill,) * len(kernel))


@converts("Convolution", "IGCConv")
def _convolution(emitter, graph, i, inputs):
    attrs, name, names = graph.attrs(i), graph.nodes[i]["name"], graph.input_names(i)
    kernel = int_tuple(attrs.get("kernel"))
    groups = int(attrs.get("num_group", 1))
    interleave = graph.op(i) == "IGCConv" and is_true(attrs.get("interleave"))
    conv = [inputs[0], emitter.constant(f"{name}_W", emitter.param(names[1]))]
    if not is_true(attrs.get("no_bias")):
        conv.append(emitter.constant(f"{name}_B", emitter.param(names[2])))
    act = attrs.get("act", "none")  # IGCConv's fused activation (optimize_for_inference)
    out = emitter.node("Conv", conv, name + ("_conv" if interleave or act != "none" else ""),
                       kernel_shape=list(kernel), strides=_spatial(attrs, "stride", kernel, 1),
                       pads=_spatial(attrs, "pad", kernel, 0) * 2, group=groups,
                       dilations=_spatial(attrs, "dilate", kernel, 1))
    if act == "relu6":
        out = emitter.node("Clip", [out, emitter.constant(f"{name}_min", np.array(0, np.float32)),
                                    emitter.constant(f"{name}_max", np.array(6, np.float32))],
                           name + ("_act" if interleave else ""))
    return emitter.permute(out, graph.shape(i), groups, name) if interleave else out


@converts("Reorder")
def _reorder(emitter, graph, i, inputs):
    return emitter.permute(inputs[0], graph.shape(i), int(graph.attrs(i)["branch_factor"]),
                           graph.nodes[i]["name"])


@converts("BatchNorm")
def _batchnorm(emitter, graph, i, inputs):
    attrs, name = graph.attrs(i), graph.nodes[i]["name"]
    gamma, beta, mean, var = (emitter.param(n) for n in graph.input_names(i)[1:5])
    if is_true(attrs.get("fix_gamma"), True):  # MXNet's default: gamma treated as 1
        gamma = np.ones_like(gamma)
    arrays = [emitter.constant(f"{name}_{k}", v) for k, v in
              (("scale", gamma), ("bias", beta), ("mean", mean), ("var", var))]
    return emitter.node("BatchNormalization", [inputs[0], *arrays], name,
                        epsilon=float(attrs.get("eps", 1e-3)))


@converts("Pooling")
def _pooling(emitter, graph, i, inputs):
    attrs, name = graph.attrs(i), graph.nodes[i]["name"]
    pool = attrs.get("pool_type", "max")
    if pool not in ("max", "avg"):
        raise ValueError(f"ONNX export: Pooling {name}: pool_type {pool!r} is not supported")
    if is_true(attrs.get("global_pool")):
        return emitter.node("GlobalMaxPool" if pool == "max" else "GlobalAveragePool",
                            inputs[:1], name)
    kernel = int_tuple(attrs.get("kernel"))
    extra = {}
    if pool == "avg":
        extra["count_include_pad"] = int(is_true(attrs.get("count_include_pad"), True))
    return emitter.node("MaxPool" if pool == "max" else "AveragePool", inputs[:1], name,
                        kernel_shape=list(kernel), strides=_spatial(attrs, "stride", kernel, 1),
                        pads=_spatial(attrs, "pad", kernel, 0) * 2,
                        ceil_mode=int(attrs.get("pooling_convention", "valid") == "full"),
                        **extra)


@converts("Reshape", "reshape")
def _reshape(emitter, graph, i, inputs):
    """An explicit-size Reshape to the inferred shape, the batch dimension kept dynamic."""
    name, shape = graph.nodes[i]["name"], graph.shape(i)
    batch = graph.shape(graph.nodes[i]["inputs"][0][0])[0]
    if shape[0] != batch:
        raise ValueError(f"ONNX export: Reshape {name} changes the batch dimension "
                         f"({batch} -> {shape[0]}); only per-sample reshapes are exported")
    target = emitter.constant(f"{name}_shape", np.array((0,) + shape[1:], np.int64))
    return emitter.node("Reshape", [inputs[0], target], name)


@converts("SwapAxis", "swapaxes")
def _swapaxes(emitter, graph, i, inputs):
    perm = list(range(len(graph.shape(i))))
    a, b = (int(graph.attrs(i).get(k, 0)) for k in ("dim1", "dim2"))
    perm[a], perm[b] = perm[b], perm[a]
    return emitter.node("Transpose", inputs[:1], graph.nodes[i]["name"], perm=perm)


@converts("Activation")
def _activation(emitter, graph, i, inputs):
    act, name = graph.attrs(i).get("act_type"), graph.nodes[i]["name"]
    if act not in _ACTIVATIONS:
        raise ValueError(f"ONNX export: Activation {name}: act_type {act!r} not supported")
    return emitter.node(_ACTIVATIONS[act], inputs[:1], name)


@converts("clip")
def _clip(emitter, graph, i, inputs):
    attrs, name = graph.attrs(i), graph.nodes[i]["name"]
    low = emitter.constant(f"{name}_min", np.array(float(attrs["a_min"]), np.float32))
    high = emitter.constant(f"{name}_max", np.array(float(attrs["a_max"]), np.float32))
    return emitter.node("Clip", [inputs[0], low, high], name)


@converts("elemwise_add", "_Plus", "_plus", "broadcast_add", "_add")
def _add(emitter, graph, i, inputs):
    return emitter.node("Add", inputs[:2], graph.nodes[i]["name"])


@converts("Flatten", "flatten")
def _flatten(emitter, graph, i, inputs):
    return emitter.node("Flatten", inputs[:1], graph.nodes[i]["name"], axis=1)


@converts("FullyConnected")
def _fully_connected(emitter, graph, i, inputs):
    name, names, data = graph.nodes[i]["name"], graph.input_names(i), inputs[0]
    if len(graph.shape(graph.nodes[i]["inputs"][0][0])) > 2:
        data = emitter.node("Flatten", [data], f"{name}_flatten", axis=1)
    gemm = [data, emitter.constant(f"{name}_W", emitter.param(names[1]))]
    if not is_true(graph.attrs(i).get("no_bias")):
        gemm.append(emitter.constant(f"{name}_B", emitter.param(names[2])))
    return emitter.node("Gemm", gemm, name, transB=1)


@converts("SoftmaxOutput", "softmax", "SoftmaxActivation")
def _softmax(emitter, graph, i, inputs):
    return emitter.node("Softmax", inputs[:1], graph.nodes[i]["name"], axis=1)


@converts("Concat", "concat")
def _concat(emitter, graph, i, inputs):
    return emitter.node("Concat", inputs, graph.nodes[i]["name"],
                        axis=int(graph.attrs(i).get("dim", "1")))


@converts("Dropout")
def _dropout(emitter, graph, i, inputs):
    return inputs[0]


def size_agnostic(symbol, data_shape):
    """Whether `symbol` takes any image size: no Reshape bakes a spatial size in and its weights
    keep their shapes at another input size (the classifier follows a global pooling)."""
    nodes = json.loads(symbol.tojson())["nodes"]
    if any(node["op"] in ("Reshape", "reshape") for node in nodes):
        return False
    channels, height, width = data_shape
    try:
        shapes = [symbol.infer_shape(data=(1, channels) + size)[0]
                  for size in ((height, width), (2 * height + 1, 2 * width + 3))]
    except MXNetError:
        return False
    weights = [i for i, name in enumerate(symbol.list_arguments()) if name != "data"]
    return all(shapes[0][i] == shapes[1][i] for i in weights)


def to_onnx(symbol, arg_params, aux_params, data_shape, fold_bn=False, graph_name="igc"):
    """An onnx.ModelProto of `optimize_for_inference(symbol, ..., fold_batchnorm=fold_bn,
    fuse_blocks=False)` (`symbol` ending in SoftmaxOutput) for input (N,) + data_shape, with
    dynamic height and width when the graph allows them; ValueError for an op without a
    converter."""
    symbol, arg_params, aux_params = optimize_for_inference(
        symbol, arg_params, aux_params, fold_batchnorm=fold_bn, fuse_blocks=False)
    graph = Graph(symbol, (1,) + tuple(data_shape))
    if len(graph.heads) != 1:
        raise ValueError(f"ONNX export: the graph has {len(graph.heads)} outputs, expected 1")
    emitter = _Emitter(graph, {**arg_params, **aux_params})
    tensors = {}
    for i, node in enumerate(graph.nodes):
        if node["op"] == "null":
            if node["name"] == "data":
                tensors[i] = INPUT_NAME
            continue
        if node["op"] not in _CONVERTERS:
            raise ValueError(f"ONNX export: no converter for op {node['op']} "
                             f"(node {node['name']})")
        inputs = [tensors.get(e[0]) for e in node["inputs"]]
        tensors[i] = _CONVERTERS[node["op"]](emitter, graph, i, inputs)
    head = tensors[graph.heads[0][0]]
    helper, onnx = emitter.helper, emitter.onnx
    emitter.nodes.append(helper.make_node("Identity", [head], [OUTPUT_NAME], name=OUTPUT_NAME))
    classes = graph.shape(graph.heads[0][0])[1]
    input_shape = ["N", data_shape[0]] + (["H", "W"] if size_agnostic(symbol, data_shape)
                                          else list(data_shape[1:]))
    model = helper.make_model(
        helper.make_graph(
            emitter.nodes, graph_name,
            [helper.make_tensor_value_info(INPUT_NAME, onnx.TensorProto.FLOAT,
                                           input_shape)],
            [helper.make_tensor_value_info(OUTPUT_NAME, onnx.TensorProto.FLOAT,
                                           ["N", classes])],
            emitter.initializers),
        opset_imports=[helper.make_opsetid("", OPSET)], producer_name="igc-mxnet")
    onnx.checker.check_model(model)
    return model
