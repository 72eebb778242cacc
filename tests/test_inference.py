"""network.optimize_for_inference: the rewritten graph's inference outputs equal the training
graph's (MXNet Module bound for inference) on random weights, non-trivial BatchNorm statistics
and a random batch, for every registered network."""
import json

import mxnet as mx
import numpy as np
import pytest

import network

BATCH = 2
IMAGENET_SIZE = 64  # layouts and folding do not depend on the spatial size


def _random_params(symbol, data_shape, rng):
    arg_shapes, _, aux_shapes = symbol.infer_shape(data=data_shape)
    args = {}
    for name, shape in zip(symbol.list_arguments(), arg_shapes):
        if name in ("data", "softmax_label"):
            continue
        if name.endswith("_gamma"):  # with the variances below: per-layer gains <= 1, so
            value = rng.uniform(0.5, 1.0, shape)  # float rounding is not amplified with depth
        elif name.endswith("_beta") or name.endswith("_bias"):
            value = rng.uniform(-0.5, 0.5, shape)
        else:  # He-scaled weights keep the activations of deep nets in range
            fan_in = max(1, int(np.prod(shape[1:])))
            value = rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)
        args[name] = mx.nd.array(value)
    aux = {}
    for name, shape in zip(symbol.list_auxiliary_states(), aux_shapes):
        value = (rng.uniform(-0.3, 0.3, shape) if name.endswith("_moving_mean")
                 else rng.uniform(1.0, 2.0, shape))
        aux[name] = mx.nd.array(value)
    return args, aux


def _predict(symbol, args, aux, data):
    module = mx.mod.Module(symbol, label_names=None, context=mx.cpu())
    module.bind(data_shapes=[("data", data.shape)], for_training=False)
    module.set_params(args, aux, allow_missing=False, allow_extra=False)
    module.forward(mx.io.DataBatch([data]), is_train=False)
    return module.get_outputs()[0].asnumpy()


def _logits(symbol):
    """The graph up to the classifier's FC (softmax would hide differences)."""
    fc = [n["name"] for n in json.loads(symbol.tojson())["nodes"]
          if n["op"] == "FullyConnected"][-1]
    return symbol.get_internals()[fc + "_output"]


@pytest.mark.parametrize("fuse", [True, False], ids=["fused", "stock-ops"])
@pytest.mark.parametrize("name", network.list_networks())
def test_optimized_graph_gives_the_training_graphs_inference_outputs(ops, name, fuse):
    size = 32 if network.network_info(name)["dataset_kind"] == "cifar" else IMAGENET_SIZE
    shape = (BATCH, 3, size, size)
    symbol = _logits(network.get_symbol(name, 10))
    rng = np.random.default_rng(0)
    args, aux = _random_params(symbol, shape, rng)
    data = mx.nd.array(rng.standard_normal(shape))
    want = _predict(symbol, args, aux, data)
    opt_symbol, opt_args, opt_aux = network.optimize_for_inference(symbol, args, aux,
                                                                   fuse_blocks=fuse)
    got = _predict(opt_symbol, opt_args, opt_aux, data)
    scale = np.abs(want).max()
    assert scale > 1e-3
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * scale)
    ops_before = {n["op"] for n in json.loads(symbol.tojson())["nodes"]}
    ops_after = {n["op"] for n in json.loads(opt_symbol.tojson())["nodes"]}
    assert not ops_after & {"BatchNormMoments", "BatchNormApply"}
    if network.network_info(name)["family"] == "igcv3":
        # the interleave became an IGCBlock's index table, or grouped-conv order
        assert "Reorder" not in ops_after
        assert ("IGCBlock" in ops_after) == fuse
    assert ops_after <= ops_before | {"BatchNorm", "clip", "Activation", "Convolution",
                                        "Concat"} | ({"IGCBlock"} if fuse else set())
