"""The network zoo: every registered network builds, runs forward and backward, and means the
same thing with the native Reorder op and with the pure-symbol permutation; the registry rejects
bad names, keys and values with messages that name them."""
import inspect
import json

import mxnet as mx
import numpy as np
import pytest

import network
import reference
from network import layers

NETWORKS = network.list_networks()
IMAGENET_IGCV1_VARIANTS = ("igc_l4m32", "igc_l16m16", "igc_l100m2")
# ImageNet nets end in a global pool, so reorder-vs-reshape is compared at 64x64 (same
# architecture, ~12x cheaper than 224x224); CIFAR nets at their own 32x32.
EQUIVALENCE_SIZE = {"cifar": 32, "imagenet": 64}


def _bind(symbol, shape, seed, num_classes):
    exe = symbol.simple_bind(mx.cpu(), grad_req="write", data=shape)
    rng = np.random.RandomState(seed)
    for name in sorted(exe.arg_dict):
        arr = exe.arg_dict[name]
        if name == "softmax_label":
            arr[:] = rng.randint(0, num_classes, arr.shape)
        else:
            arr[:] = rng.uniform(-1, 1, arr.shape)
    return exe


def _forward_backward(symbol, shape, seed=0, num_classes=10):
    exe = _bind(symbol, shape, seed, num_classes)
    out = exe.forward(is_train=True)[0].asnumpy()
    exe.backward()
    grads = {k: v.asnumpy() for k, v in exe.grad_dict.items() if k != "softmax_label"}
    return out, grads


@pytest.mark.parametrize("name", NETWORKS)
def test_network_forward_backward_at_its_input_size_is_finite(ops, name):
    size = network.network_info(name)["input_size"]
    num_classes = 7
    symbol = network.get_symbol(name, num_classes)
    _, out_shapes, _ = symbol.infer_shape(data=(1, 3, size, size))
    assert out_shapes == [(1, num_classes)]
    out, grads = _forward_backward(symbol, (1, 3, size, size), num_classes=num_classes)
    assert out.shape == (1, num_classes)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-5)
    assert np.isfinite(out).all()
    assert all(np.isfinite(g).all() for g in grads.values())
    # Every learnable argument receives a gradient (nothing is left disconnected).
    assert all(np.abs(g).sum() > 0 for k, g in grads.items() if k != "data")


EQUIVALENCE_CASES = [(name, {}) for name in NETWORKS] + [
    ("resnet_igc_imgnet_d18", {"variant": v}) for v in IMAGENET_IGCV1_VARIANTS
    if v != network.network_defaults("resnet_igc_imgnet_d18")["variant"]]


@pytest.mark.parametrize("name,config", EQUIVALENCE_CASES,
                         ids=[f"{n}-{c.get('variant', 'default')}" for n, c in EQUIVALENCE_CASES])
def test_reorder_and_reshape_permutations_give_identical_outputs_and_gradients(ops, name, config):
    size = EQUIVALENCE_SIZE[network.network_info(name)["dataset_kind"]]
    shape = (2, 3, size, size)
    # conv_impl='mxnet' on both sides isolates the permutation (IGCConv, the 'auto' choice
    # with the native op, sums in another order; tests/test_igc_conv.py compares it).
    native = network.get_symbol(name, 10, permutation="reorder", conv_impl="mxnet", **config)
    reference = network.get_symbol(name, 10, permutation="reshape", conv_impl="mxnet", **config)
    assert native.list_arguments() == reference.list_arguments()
    out_n, grads_n = _forward_backward(native, shape, seed=1)
    out_r, grads_r = _forward_backward(reference, shape, seed=1)
    np.testing.assert_allclose(out_n, out_r, rtol=1e-5, atol=1e-7)
    for key in grads_r:
        np.testing.assert_allclose(grads_n[key], grads_r[key], rtol=1e-4, atol=1e-6,
                                   err_msg=key)


def test_igc_networks_really_contain_the_permutation(ops):
    # Guards the equivalence test above against comparing two graphs without any permutation.
    for name in ("plain_igc", "resnet_igc", "resnet_igc_imgnet_d18", "igcv2", "igcv3"):
        ops_used = {n["op"] for n in json.loads(
            network.get_symbol(name, 10, conv_impl="mxnet").tojson())["nodes"]}
        assert "Reorder" in ops_used, name
        ops_used = {n["op"] for n in json.loads(
            network.get_symbol(name, 10, permutation="reshape").tojson())["nodes"]}
        assert "Reorder" not in ops_used and "SwapAxis" in ops_used, name


def test_reshape_permutation_graphs_use_only_stock_mxnet_ops():
    for name in NETWORKS:
        symbol = network.get_symbol(name, 10, permutation="reshape")
        ops_used = {n["op"] for n in json.loads(symbol.tojson())["nodes"]}
        assert not ops_used & {"Reorder", "IGCConv"}, name


def test_permute_reshape_path_matches_numpy_channel_shuffle():
    x = np.random.RandomState(0).rand(2, 12, 3, 2).astype(np.float32)
    g = 3
    out = layers.permute(mx.sym.var("x"), g, "p", "reshape").eval(x=mx.nd.array(x))[0].asnumpy()
    np.testing.assert_array_equal(out, reference.reorder(x, g))


def test_network_defaults_are_every_accepted_key_and_reproduce_the_default_graph():
    for name in NETWORKS:
        defaults = network.network_defaults(name)
        assert {"permutation", "conv_impl"} <= set(defaults), name
        assert defaults["permutation"] == "reorder" and defaults["conv_impl"] == "auto"
        explicit = dict(defaults, permutation="reshape")
        assert (network.get_symbol(name, 10, **explicit).tojson()
                == network.get_symbol(name, 10, permutation="reshape").tojson())


def test_builders_receive_one_resolved_ops_object_not_the_choice_strings():
    from network.registry import _entry
    for name in NETWORKS:
        params = list(inspect.signature(_entry(name).builder).parameters)
        assert params[:2] == ["num_classes", "ops"], name
        assert not {"permutation", "conv_impl", "device"} & set(params), name
    assert layers.resolve_ops("reorder", "auto", "cpu") == layers.Ops("reorder", "narrow", True)
    assert layers.resolve_ops("reshape", "auto", "cpu") == layers.Ops("reshape", "never", False)
    assert layers.resolve_ops("reshape", "igc", "cpu") == layers.Ops("reshape", "always", True)
    assert layers.resolve_ops("reorder", "mxnet", "cpu") == layers.Ops("reorder", "never", False)


def test_network_info_gives_input_size_dataset_kind_and_family():
    for name in NETWORKS:
        info = network.network_info(name)
        assert (info["dataset_kind"], info["input_size"]) in {("cifar", 32), ("imagenet", 224)}
        assert info["family"] in {"plain", "resnet", "igcv1", "igcv2", "igcv3", "mobilenetv2"}


def test_authors_network_names_are_registered():
    assert {"plain", "resnet", "plain_igc", "resnet_igc", "resnet_imgnet_d18",
            "resnet_igc_imgnet_d18", "igcv2", "igcv2_cifar", "igcv3", "igcv3_cifar",
            "mobilenetv2", "mobilenetv2_cifar"} <= set(NETWORKS)
    assert NETWORKS == sorted(NETWORKS)


@pytest.mark.parametrize("call,needles", [
    (lambda: network.get_symbol("resnet50", 10), ["resnet50", "plain_igc", "igcv3"]),
    (lambda: network.network_defaults("nope"), ["nope", "resnet_igc"]),
    (lambda: network.get_symbol("plain", 10, primary_partition=4),
     ["primary_partition", "depth", "width"]),
    (lambda: network.get_symbol("plain", 0), ["num_classes", "0"]),
    (lambda: network.get_symbol("plain", 10, depth=21), ["21", "multiple of 3"]),
    (lambda: network.get_symbol("plain_igc", 10, depth=2), ["2"]),
    (lambda: network.get_symbol("resnet", 10, depth=21), ["21"]),
    (lambda: network.get_symbol("resnet_igc", 10, depth=4), ["4"]),
    (lambda: network.get_symbol("plain_igc", 10, primary_partition=0), ["primary_partition", "0"]),
    (lambda: network.get_symbol("resnet_igc", 10, secondary_partition=2.5),
     ["secondary_partition", "2.5"]),
    (lambda: network.get_symbol("resnet", 10, width=-16), ["width", "-16"]),
    (lambda: network.get_symbol("plain_igc", 10, permutation="shuffle"),
     ["permutation", "shuffle", "reshape"]),
    (lambda: network.get_symbol("igcv3", 10, conv_impl="cudnn"), ["conv_impl", "cudnn", "igc"]),
    (lambda: network.get_symbol("resnet_igc_imgnet_d18", 10, variant="igc_l8m8"),
     ["igc_l8m8", "igc_l16m16"]),
    (lambda: network.get_symbol("resnet_igc_imgnet_d18", 10, variant="igc_l16m16",
                                primary_partition=4, secondary_partition=32), ["16", "4", "32"]),
    (lambda: network.get_symbol("resnet_igc_imgnet_d18", 10, primary_partition=5),
     ["primary_partition", "secondary_partition", "(5, None)", "igc_l4m32=(4, 32)"]),
    (lambda: network.get_symbol("resnet_igc_imgnet_d18", 10, primary_partition=3,
                                secondary_partition=0), ["secondary_partition", "0"]),
    (lambda: network.get_symbol("igcv3_cifar", 10, depth_multiplier=0.6), ["0.6", "0.7"]),
    (lambda: network.get_symbol("igcv3", 10, width_multiplier=0), ["width_multiplier", "0"]),
    (lambda: network.get_symbol("mobilenetv2", 10, t1_expansion="yes"), ["t1_expansion"]),
    (lambda: network.get_symbol("igcv2", 10, width_multiplier="1"), ["width_multiplier"]),
])
def test_invalid_configuration_raises_value_error_naming_the_values(call, needles):
    with pytest.raises(ValueError) as err:
        call()
    for needle in needles:
        assert needle in str(err.value)


def test_registering_a_duplicate_name_is_refused():
    from network.registry import register_network
    with pytest.raises(ValueError, match="plain"):
        register_network("plain", plan=lambda: [], dataset_kind="cifar", family="plain",
                         description="")(lambda num_classes: None)


def test_generic_partitions_follow_the_fixed_L_layout_of_the_released_variants():
    rows = network.get_plan("resnet_igc_imgnet_d18", primary_partition=8, secondary_partition=8)
    assert [(r.width, r.L, r.M) for r in rows[1:]] == [
        (64, 8, 8), (128, 8, 16), (256, 8, 32), (512, 8, 64)]
    assert rows[0].width == 64
    # The same rule reproduces the released L4M32 and L16M16 tables.
    for L, M in ((4, 32), (16, 16)):
        by_partitions = network.get_plan("resnet_igc_imgnet_d18", primary_partition=L,
                                         secondary_partition=M)
        assert [(r.width, r.L, r.M) for r in by_partitions[1:]] == [
            (L * M << s, L, M << s) for s in range(4)]


@pytest.mark.parametrize("partitions,variant", [
    (dict(primary_partition=100), "igc_l100m2"),
    (dict(primary_partition=16), "igc_l16m16"),
    (dict(secondary_partition=32), "igc_l4m32"),
])
def test_one_partition_names_the_released_imagenet_variant(partitions, variant):
    from_one = network.get_symbol("resnet_igc_imgnet_d18", 1000, permutation="reshape",
                                  **partitions)
    named = network.get_symbol("resnet_igc_imgnet_d18", 1000, permutation="reshape",
                               variant=variant)
    shape = (1, 3, 224, 224)
    assert from_one.infer_shape(data=shape)[0] == named.infer_shape(data=shape)[0]
    assert from_one.list_arguments() == named.list_arguments()


def test_one_partition_that_matches_no_released_variant_is_an_error():
    with pytest.raises(ValueError, match=r"\(7, None\) matches no released variant"):
        network.get_symbol("resnet_igc_imgnet_d18", 1000, primary_partition=7)


BAD_CLI = [(["igcv3", "--permutation", "nope"], "argument --permutation: invalid choice: 'nope'"),
           (["mobilenetv2", "--t1-expansion", "maybe"],
            "argument --t1-expansion: expected true or false, got 'maybe'"),
           (["igcv3", "--width-multiplier", "nan"], "argument --width-multiplier: "),
           (["plain_igc", "--num-classes", "0"], "argument --num-classes: "),
           (["no_such_net"], "unknown network 'no_such_net'")]


@pytest.mark.parametrize("argv,message", BAD_CLI, ids=[" ".join(a) for a, _ in BAD_CLI])
def test_python_m_network_refuses_bad_values_naming_the_flag(argv, message, capsys):
    from network import __main__ as network_cli
    with pytest.raises(SystemExit) as exit_info:
        network_cli.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert "Traceback" not in err


def test_python_m_network_uses_the_given_num_classes(capsys):
    from network import __main__ as network_cli
    assert network_cli.main(["plain_igc", "--num-classes", "3", "--depth", "8"]) == 0
    out = capsys.readouterr().out
    assert "3 classes" in out
    # The classifier row: 3 outputs.
    (row,) = [line for line in out.splitlines() if line.startswith("classifier")]
    assert row.split()[1] == "3"
