"""network.optimize_for_inference: the rewritten graph holds no BatchNorm and its inference
outputs equal the training graph's (MXNet Module bound for inference) on random weights,
non-trivial BatchNorm statistics and a random batch, for every registered network and variant."""
import json
import os

import mxnet as mx
import numpy as np
import pytest

import network
import reference
from network.graph import permutation_source
from network.released import RELEASED_CHECKPOINTS
from network.resnet import IGC_IMAGENET_VARIANTS

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


def variants(name):
    """The configurations of `name` worth telling apart: the defaults, each released graph's
    (and every IGCV1 ImageNet variant), the other permutation and convolution implementations,
    and MobileNetV2 without the t=1 expansion."""
    defaults = network.network_defaults(name)
    configs = [{}] + [dict(c.config) for c in RELEASED_CHECKPOINTS
                      if c.network == name and c.config]
    if "variant" in defaults:
        configs += [dict(variant=v) for v in IGC_IMAGENET_VARIANTS
                    if dict(variant=v) not in configs]
    if "permutation" in defaults:
        configs.append(dict(permutation="reshape"))
    if "conv_impl" in defaults:
        configs += [dict(conv_impl="igc"), dict(conv_impl="mxnet")]
    if "t1_expansion" in defaults:
        configs.append(dict(t1_expansion=False))
    return configs


def cases():
    """(name, config, fuse): IGCBlock fusion only matters in the inverted-residual families."""
    for name in network.list_networks():
        fuses = (True, False) if network.network_info(name)["family"] in (
            "igcv3", "mobilenetv2") else (True,)
        for config in variants(name):
            for fuse in fuses:
                yield pytest.param(name, config, fuse, id="-".join(
                    [name, *map(str, config.values()), "fused" if fuse else "stock-ops"]))


@pytest.mark.parametrize("name,config,fuse", list(cases()))
def test_optimized_graph_has_no_batchnorm_and_gives_the_training_graphs_outputs(ops, name,
                                                                                config, fuse):
    size = 32 if network.network_info(name)["dataset_kind"] == "cifar" else IMAGENET_SIZE
    shape = (BATCH, 3, size, size)
    symbol = _logits(network.get_symbol(name, 10, **config))
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
    assert "BatchNorm" in ops_before or "BatchNormApply" in ops_before
    assert not {op for op in ops_after if op.startswith("BatchNorm")}, ops_after
    assert not opt_aux
    if network.network_info(name)["family"] == "igcv3":
        # the interleave became an IGCBlock's index table, or grouped-conv order
        assert not ops_after & {"Reorder", "SwapAxis"}
        assert ("IGCBlock" in ops_after) == fuse
    assert ops_after <= ops_before | {"clip", "Activation", "Convolution", "Concat"} | (
        {"IGCBlock", "IGCConv"} if fuse else set())
    if fuse and network.network_info(name)["family"] in ("igcv3", "mobilenetv2"):
        # The stem conv + clip that feeds the first IGCBlock is one IGCConv(act='relu6'): plain
        # NCHW out, no oneDNN layout for MXNet to convert before the block.
        nodes = json.loads(opt_symbol.tojson())["nodes"]
        fused_stems = [i for i, n in enumerate(nodes)
                       if n["op"] == "IGCConv" and n["attrs"].get("act") == "relu6"]
        first_block = next(n for n in nodes if n["op"] == "IGCBlock")
        assert (len(fused_stems) == 1) == (nodes[first_block["inputs"][0][0]]["op"] == "IGCConv")
        assert len(fused_stems) == (0 if config.get("t1_expansion") is False else 1)


@pytest.mark.parametrize("name, blocks, packed", [("mobilenetv2_cifar", 17, 17),
                                                   ("igcv3_cifar", 32, 28)])
def test_blocks_with_multiples_of_8_channels_per_group_get_packed_weights(ops, name, blocks,
                                                                         packed):
    """IGCV3's 2-group blocks with 24 output channels (12 per group) keep the unpacked kernel;
    a packed block reads `{weight}_packed` (flat) instead of its two 1x1 weights; with
    pack_blocks=False none is packed, and the outputs agree."""
    shape = (BATCH, 3, 32, 32)
    symbol = _logits(network.get_symbol(name, 10))
    args, aux = _random_params(symbol, shape, np.random.default_rng(0))
    opt_symbol, opt_args, _ = network.optimize_for_inference(symbol, args, aux)
    nodes = json.loads(opt_symbol.tojson())["nodes"]
    fused = [n for n in nodes if n["op"] == "IGCBlock"]
    assert len(fused) == blocks
    assert sum(n["attrs"].get("packed_weights") == "True" for n in fused) == packed
    unpacked, unpacked_args, unpacked_aux = network.optimize_for_inference(symbol, args, aux,
                                                                           pack_blocks=False)
    assert not any(n["attrs"].get("packed_weights") == "True"
                   for n in json.loads(unpacked.tojson())["nodes"] if n["op"] == "IGCBlock")
    data = mx.nd.array(np.random.default_rng(1).standard_normal(shape))
    want = _predict(unpacked, unpacked_args, unpacked_aux, data)
    np.testing.assert_allclose(_predict(opt_symbol, opt_args, {}, data), want, rtol=0,
                               atol=1e-4 * np.abs(want).max())
    for n in fused:
        weights = [nodes[i[0]]["name"] for i in n["inputs"]][1::2][:3:2]  # exp, lin weights
        is_packed = n["attrs"].get("packed_weights") == "True"
        assert all(w.endswith("_weight_packed") == is_packed for w in weights), weights
        for w in weights:
            assert opt_args[w].ndim == (1 if is_packed else 4)
            assert w.removesuffix("_packed") not in opt_args or not is_packed


@pytest.mark.parametrize("name", ["mobilenetv2_cifar", "igcv3_cifar", "plain_igc"])
def test_optimizing_an_optimized_graph_changes_nothing(ops, name):
    """A saved inference graph can go through optimize_for_inference again (scoring and the
    ONNX export do): the plugin ops keep their weights' shapes (MXNet's extension API needs
    them), the stem stays one IGCConv, and the graph, parameters and outputs are the same."""
    shape = (BATCH, 3, 32, 32)
    symbol = _logits(network.get_symbol(name, 10))
    args, aux = _random_params(symbol, shape, np.random.default_rng(0))
    once = network.optimize_for_inference(symbol, args, aux)
    twice = network.optimize_for_inference(*once)
    nodes = [[(n["op"], n["name"], n.get("attrs", {})) for n in json.loads(s.tojson())["nodes"]]
             for s in (once[0], twice[0])]
    assert nodes[0] == nodes[1]
    assert sorted(once[1]) == sorted(twice[1]) and not twice[2]
    data = mx.nd.array(np.random.default_rng(1).standard_normal(shape))
    np.testing.assert_array_equal(_predict(*twice, data), _predict(*once, data))


@pytest.mark.parametrize("fold", [True, False], ids=["folded", "kept"])
def test_a_released_graph_folds_across_its_permutations_too(released_symbols_dir, ops, fold):
    # The authors' IGC-L100M2 file: conv2 -> Reorder(2) -> BatchNorm in every unit.
    symbol = _logits(mx.sym.load(os.path.join(
        released_symbols_dir, "resnet_gcwf_noshare_imagenet_d18b100-symbol.json")))
    shape = (1, 3, 224, 224)
    rng = np.random.default_rng(1)
    args, aux = _random_params(symbol, shape, rng)
    data = mx.nd.array(rng.standard_normal(shape))
    want = _predict(symbol, args, aux, data)
    opt = network.optimize_for_inference(symbol, args, aux, fold_batchnorm=fold)
    ops_after = [n["op"] for n in json.loads(opt[0].tojson())["nodes"]]
    assert ops_after.count("BatchNorm") == (0 if fold else 21)
    assert ops_after.count("Reorder") == 32
    np.testing.assert_allclose(_predict(*opt, data), want, rtol=0, atol=1e-4 * np.abs(want).max())


@pytest.mark.parametrize("channels,groups", [(12, 3), (12, 4), (8, 1), (8, 8), (200, 100)])
def test_permutation_source_is_reorder_and_its_inverse_is_reorder_of_c_over_g(channels, groups):
    x = np.random.default_rng(channels + groups).standard_normal((2, channels, 3))
    src = permutation_source(channels, groups)
    np.testing.assert_array_equal(x[:, src], reference.reorder(x, groups))
    np.testing.assert_array_equal(x[:, src][:, permutation_source(channels, channels // groups)],
                                  x)
