"""The structure of the IGC units: equal to one dense convolution (IGCV1), one path from every
input to every output channel (IGCV2), and names/shapes identical to the released graphs."""
import json
import os

import mxnet as mx
import numpy as np
import pytest

import network
import reference
from network import igcv2, layers
from network.released import RELEASED_CHECKPOINTS


def _shapes(symbol, data_shape=(1, 3, 224, 224)):
    args, _, aux = symbol.infer_shape(data=data_shape)
    return (dict(zip(symbol.list_arguments(), args)),
            dict(zip(symbol.list_auxiliary_states(), aux)))


@pytest.mark.parametrize("checkpoint", RELEASED_CHECKPOINTS,
                         ids=[c.symbol_file.split("-symbol")[0] for c in RELEASED_CHECKPOINTS])
def test_argument_and_aux_names_and_shapes_equal_the_released_graph(ops, released_symbols_dir,
                                                                    checkpoint):
    released = mx.sym.load(os.path.join(released_symbols_dir, checkpoint.symbol_file))
    ours = network.get_symbol(checkpoint.network, 1000, **checkpoint.config)
    ours_args, ours_aux = _shapes(ours)
    released_args, released_aux = _shapes(released)
    assert ours_args == released_args
    assert ours_aux == released_aux


@pytest.mark.parametrize("permutation", ["reorder", "reshape"])
@pytest.mark.parametrize("L,M", [(4, 3), (1, 6), (6, 1)],
                         ids=["L4M3", "L1-regular-then-channelwise", "M1-depthwise-then-dense"])
def test_igc_unit_equals_one_dense_conv_with_kernel_PM_W2_PL_W1(ops, permutation, L, M):
    C, k, stride = L * M, 3, 2
    rng = np.random.RandomState(L * 10 + M)
    x = rng.randn(2, C, 9, 7).astype(np.float32)
    w1 = rng.randn(C, C // L, k, k).astype(np.float32)
    w2 = rng.randn(C, C // M, 1, 1).astype(np.float32)
    # The unit's convolutions and permutations, exactly as the networks emit them.
    ops = layers.Ops(permutation)
    data = ops.conv_permute(mx.sym.var("data"), "u_conv1", "u_reorder1", C, k, stride, L)
    unit = ops.conv_permute(data, "u_conv2", "u_reorder2", C, 1, 1, M)
    out = unit.eval(data=mx.nd.array(x), u_conv1_weight=mx.nd.array(w1),
                    u_conv2_weight=mx.nd.array(w2))[0].asnumpy()
    # Reference: P_M W2 P_L W1 composed in numpy, applied by one dense convolution.
    dense = reference.igc_unit_kernel(w1, L, w2, M).astype(np.float32)
    expected = mx.nd.Convolution(mx.nd.array(x), mx.nd.array(dense), num_filter=C,
                                 kernel=(k, k), stride=(stride, stride), pad=(1, 1),
                                 no_bias=True).asnumpy()
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)
    # The special cases really are a regular / channel-wise pair.
    if L == 1:
        assert np.count_nonzero(reference.block_diagonal(w1, L)) == w1.size == C * C * k * k
    if M == 1:
        assert w1.shape[1] == 1 and w2.shape[1] == C


@pytest.mark.parametrize("kin,kout", [(64, 64), (64, 128), (448, 896), (12, 18)])
def test_igcv2_unit_connects_every_input_to_every_output_through_exactly_one_path(ops, kin, kout):
    groups = igcv2.balanced_groups(kin, kout)
    unit = igcv2.igcv2_unit(layers.Ops("reorder"), mx.sym.var("data"), "u", kin, kout, 1, groups)
    exe = unit.simple_bind(mx.cpu(), grad_req="null", data=(kin, kin, 1, 1))
    for name, arr in exe.arg_dict.items():
        arr[:] = 1
    exe.arg_dict["u_bn_beta"][:] = 0
    exe.arg_dict["u_conv1_weight"][:] = 0
    exe.arg_dict["u_conv1_weight"][:, :, 1, 1] = 1  # the 3x3 channel-wise conv as identity
    exe.aux_dict["u_bn_moving_mean"][:] = 0
    exe.aux_dict["u_bn_moving_var"][:] = 1
    exe.arg_dict["data"][:] = np.eye(kin).reshape(kin, kin, 1, 1)  # sample i = input channel i
    paths = exe.forward(is_train=False)[0].asnumpy()[:, :, 0, 0] * np.sqrt(1 + 2e-5)
    np.testing.assert_allclose(paths, np.ones((kin, kout)), rtol=1e-5)


@pytest.mark.parametrize("kin,kout,expected", [(64, 64, 8), (64, 128, 8), (448, 896, 16),
                                               (12, 18, 3), (32, 24, 4)])
def test_igcv2_groups_follow_the_balance_condition(kin, kout, expected):
    # G divides both widths and is the divisor closest to sqrt(kin): 8 for 64; 448 = 16 * 28
    # ties and takes the smaller; gcd(12, 18) = 6 leaves 3 (closest to 3.46); gcd(32, 24) = 8.
    assert igcv2.balanced_groups(kin, kout) == expected


def test_conv_impl_igc_fuses_primary_conv_and_permutation_with_interchangeable_weights(ops):
    for name in ("plain_igc", "resnet_igc", "resnet_igc_imgnet_d18", "igcv2_cifar"):
        size = network.network_info(name)["input_size"]
        fused = network.get_symbol(name, 10, conv_impl="igc")
        plain = network.get_symbol(name, 10, conv_impl="mxnet")
        assert _shapes(fused, (1, 3, size, size)) == _shapes(plain, (1, 3, size, size))
    shape = (2, 3, 32, 32)
    outputs = []
    for conv_impl in ("igc", "mxnet"):
        symbol = network.get_symbol("resnet_igc", 10, conv_impl=conv_impl)
        # A training executor: with grad_req="null" MXNet's subgraph pass folds each
        # Convolution + BatchNorm with the moving statistics even in forward(is_train=True).
        exe = symbol.simple_bind(mx.cpu(), grad_req="write", data=shape)
        rng = np.random.RandomState(3)
        for key in sorted(exe.arg_dict):
            exe.arg_dict[key][:] = rng.uniform(-1, 1, exe.arg_dict[key].shape)
        outputs.append(exe.forward(is_train=True)[0].asnumpy())
    np.testing.assert_allclose(outputs[0], outputs[1], rtol=1e-4, atol=1e-6)


def _ops_by_layer(symbol, suffix):
    return {node["op"] for node in json.loads(symbol.tojson())["nodes"]
            if node["name"].endswith(suffix)}


@pytest.mark.parametrize("name,config,permutation,primary_fused,secondary_fused", [
    ("plain_igc", {}, "reorder", True, True),              # 2 and 24 channels per group
    ("resnet_igc_imgnet_d18", {"variant": "igc_l100m2"}, "reorder", True, True),  # 2 / 100
    ("resnet_igc_imgnet_d18", {"variant": "igc_l4m32"}, "reorder", False, True),   # 32 / 4
    ("resnet_igc_imgnet_d18", {"variant": "igc_l16m16"}, "reorder", False, True),  # 16 / 16
    ("plain_igc", {}, "reshape", False, False),            # no plugin wanted
])
def test_conv_impl_auto_fuses_only_narrow_groups_with_the_native_permutation(
        ops, name, config, permutation, primary_fused, secondary_fused):
    symbol = network.get_symbol(name, 10, permutation=permutation, **config)
    for suffix, fused in (("_conv1", primary_fused), ("_conv2", secondary_fused)):
        assert _ops_by_layer(symbol, suffix) == {"IGCConv" if fused else "Convolution"}, suffix


@pytest.mark.parametrize("name", ["igcv3_cifar", "mobilenetv2"])
@pytest.mark.parametrize("permutation,conv_impl,expected", [
    ("reorder", "auto", "IGCConv"), ("reorder", "mxnet", "Convolution"),
    ("reshape", "auto", "Convolution")])
def test_depthwise_and_1x1_convs_are_igc_conv_beside_the_native_batchnorm(
        ops, name, permutation, conv_impl, expected):
    symbol = network.get_symbol(name, 10, permutation=permutation, conv_impl=conv_impl)
    assert _ops_by_layer(symbol, "-depthwise-conv2d") == {expected}
    # The 1x1 convs too (MobileNetV2's dense), but not the 3x3 stem.
    assert _ops_by_layer(symbol, "-exp-conv2d") == {expected}
    assert _ops_by_layer(symbol, "-linear-conv2d") == {expected}
    assert _ops_by_layer(symbol, "last-1x1-conv-conv2d") == {expected}
    assert _ops_by_layer(symbol, "first-3x3-conv-conv2d") == {"Convolution"}
