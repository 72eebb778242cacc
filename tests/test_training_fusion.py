"""network.fuse_input_batchnorms, the training graph's rewrite: every plugin BatchNormApply read
by an IGCConv alone moves into that conv (in_act), and every BatchNormMoments of an
IGCConv's output comes from that conv (moments), and the head's global average Pooling runs as
GlobalAvgPool, with the arguments, states, outputs, gradients and state updates of the symbol as
built (bit for bit), which is what checkpoints keep; MXNet's stem Convolution runs as IGCConv
(the same step to rounding)."""
import json
import os

import mxnet as mx
import numpy as np
import pytest

import network

# Small members of every family with plugin BatchNorms before IGCConvs (32x32 inputs).
FAMILIES = [
    ("mobilenetv2_cifar", {}),
    ("igcv3_cifar", dict(depth_multiplier=0.5, width_multiplier=0.25)),
    ("plain_igc", dict(depth=8, primary_partition=4, secondary_partition=2)),
    ("resnet_igc", dict(depth=8, primary_partition=4, secondary_partition=2)),
]


def ops_of(symbol):
    return [n["op"] for n in json.loads(symbol.tojson())["nodes"]]


def fused_conv_parameters(symbol):
    """Names of the weight and bias arguments of the IGCConvs with an input BatchNorm."""
    nodes = json.loads(symbol.tojson())["nodes"]
    names = set()
    for node in nodes:
        if node["op"] == "IGCConv" and "in_act" in node.get("attrs", {}):
            names.update(nodes[i]["name"] for i, _, _ in node["inputs"][5:])
    return names


def training_step(symbol, seed=0):
    """Outputs, every argument gradient and the updated auxiliary states of one training
    forward/backward at batch 3, from the same random parameters for any symbol with these
    arguments."""
    shapes = dict(data=(3, 3, 32, 32), softmax_label=(3,))
    exe = symbol.simple_bind(mx.cpu(), grad_req="write", **shapes)
    rng = np.random.RandomState(seed)
    for name, array in sorted(exe.arg_dict.items()):
        if name == "softmax_label":
            array[:] = rng.randint(0, 10, array.shape)
        else:
            array[:] = rng.uniform(-1, 1, array.shape) * (3 if name == "data" else 0.3)
    for name, array in sorted(exe.aux_dict.items()):
        array[:] = rng.uniform(0.5, 1.5, array.shape) if name.endswith("var") else 0
    outputs = [o.asnumpy() for o in exe.forward(is_train=True)]
    exe.backward()
    return (outputs, {k: g.asnumpy() for k, g in exe.grad_dict.items() if g is not None},
            {k: a.asnumpy() for k, a in exe.aux_dict.items()})


@pytest.mark.parametrize("name, config", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_fused_training_graph_computes_the_same_step_bit_for_bit(ops, name, config):
    """The same outputs, gradients and state updates, bit for bit (the fused convs' weight
    gradients to rounding, see below; bit for bit on one thread: test_igc_conv.py)."""
    symbol = network.get_symbol(name, 10, **config)
    fused = network.fuse_input_batchnorms(symbol, stem=False)  # the stem: the test below
    assert fused.list_arguments() == symbol.list_arguments()
    assert fused.list_auxiliary_states() == symbol.list_auxiliary_states()
    assert fused.list_outputs() == symbol.list_outputs()
    before, after = ops_of(symbol).count("BatchNormApply"), ops_of(fused).count("BatchNormApply")
    assert after < before and ops_of(fused).count("IGCConv") == ops_of(symbol).count("IGCConv")
    # Only the stem's BatchNorm, after MXNet's Convolution, keeps its BatchNormMoments.
    assert ops_of(symbol).count("BatchNormMoments") > 1
    assert ops_of(fused).count("BatchNormMoments") == 1
    # The head's global average Pooling runs as the plugin's GlobalAvgPool (the same values).
    assert ops_of(symbol).count("Pooling") == 1 and "Pooling" not in ops_of(fused)
    assert ops_of(fused).count("GlobalAvgPool") == 1
    want_out, want_grads, want_aux = training_step(symbol)
    got_out, got_grads, got_aux = training_step(fused)
    for got, want in zip(got_out, want_out):
        np.testing.assert_array_equal(got, want)
    assert got_grads.keys() == want_grads.keys()
    # A fused conv's weight (and bias) gradient sums each channel over the images on one thread;
    # the unfused conv on several threads splits those sums as the threads take its items.
    rounded = fused_conv_parameters(fused)
    assert rounded and rounded < set(want_grads)
    for key, want in want_grads.items():
        if key in rounded:
            np.testing.assert_allclose(got_grads[key], want, rtol=1e-5,
                                       atol=1e-6 * np.abs(want).max(), err_msg=key)
        else:
            np.testing.assert_array_equal(got_grads[key], want, err_msg=key)
    for key, want in want_aux.items():
        np.testing.assert_array_equal(got_aux[key], want, err_msg=key)


@pytest.mark.parametrize("name, config", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_stem_runs_as_igc_conv_with_the_same_step_to_rounding(ops, name, config):
    """The stem (MXNet's Convolution of the input, read by the plugin BatchNorm) becomes an
    IGCConv with the same weight, and its BatchNorm is fused as the others: no Convolution and
    no BatchNormMoments left; the step differs from the graph as built by rounding only."""
    symbol = network.get_symbol(name, 10, **config)
    fused = network.fuse_input_batchnorms(symbol)
    assert fused.list_arguments() == symbol.list_arguments()
    assert fused.list_auxiliary_states() == symbol.list_auxiliary_states()
    assert ops_of(symbol).count("Convolution") == 1
    assert "Convolution" not in ops_of(fused) and "BatchNormMoments" not in ops_of(fused)
    assert ops_of(fused).count("IGCConv") == ops_of(symbol).count("IGCConv") + 1
    nodes = json.loads(fused.tojson())["nodes"]
    stem = [n for n in nodes if n["op"] == "IGCConv" and nodes[n["inputs"][0][0]]["name"] == "data"]
    assert len(stem) == 1 and stem[0]["attrs"]["moments"] == "True"
    want_out, want_grads, want_aux = training_step(symbol)
    got_out, got_grads, got_aux = training_step(fused)
    for got, want in zip(got_out, want_out):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert got_grads.keys() == want_grads.keys()
    # Rounding only: some gradients are themselves rounding (a BatchNorm's beta before another
    # BatchNorm sums to ~1e-7), hence an absolute floor below every real gradient's size.
    for key, want in want_grads.items():
        np.testing.assert_allclose(got_grads[key], want, rtol=1e-3, atol=1e-5, err_msg=key)
    for key, want in want_aux.items():
        np.testing.assert_allclose(got_aux[key], want, rtol=1e-4, atol=1e-5, err_msg=key)


def test_only_a_unit_stride_stem_read_by_the_plugin_batchnorm_becomes_igc_conv(ops,
                                                                              monkeypatch):
    """The stride-2 224x224 stems stay MXNet's (MobileNetV2's 3x3, IGCV1's 7x7), as does a stem
    that something besides the plugin BatchNorm reads, a dilated one, one with MXNet's BatchNorm
    (conv_impl='mxnet': the graph comes back as it is), and any stem under IGC_FUSE_STEM=0."""
    for name in ("resnet_igc_imgnet_d18", "mobilenetv2"):
        imagenet = network.get_symbol(name, 10)
        assert ops_of(network.fuse_input_batchnorms(imagenet)).count("Convolution") == 1
    plain = network.get_symbol("mobilenetv2_cifar", 10, conv_impl="mxnet")
    assert network.fuse_input_batchnorms(plain) is plain
    data = mx.sym.var("data")
    conv = mx.sym.Convolution(data, num_filter=8, kernel=(3, 3), pad=(1, 1), no_bias=True,
                              name="stem")
    from network.layers import batchnorm
    head = batchnorm(conv, "bn", act="relu6", native=True)
    shared = mx.sym.Group([head, conv])  # the stem's output is a graph output as well
    assert "Convolution" in ops_of(network.fuse_input_batchnorms(shared))
    assert "Convolution" not in ops_of(network.fuse_input_batchnorms(head))
    dilated = batchnorm(mx.sym.Convolution(data, num_filter=8, kernel=(3, 3), dilate=(2, 2),
                                           no_bias=True, name="stem"), "bn", native=True)
    assert "Convolution" in ops_of(network.fuse_input_batchnorms(dilated))
    symbol = network.get_symbol("mobilenetv2_cifar", 10)
    monkeypatch.setenv("IGC_FUSE_STEM", "0")
    assert ops_of(network.fuse_input_batchnorms(symbol)).count("Convolution") == 1
    monkeypatch.delenv("IGC_FUSE_STEM")
    assert "Convolution" not in ops_of(network.fuse_input_batchnorms(symbol))


def test_only_applies_read_by_one_conv_alone_move(ops):
    """What stays: an apply read twice (a residual shortcut as well), one whose reader is no
    conv; what moves includes the applies before pointwise convs (MobileNetV2's linear 1x1s)."""
    symbol = network.get_symbol("mobilenetv2_cifar", 10)
    fused = network.fuse_input_batchnorms(symbol)
    graph = json.loads(fused.tojson())
    nodes = graph["nodes"]
    readers = {}
    for i, node in enumerate(nodes):
        for entry in node["inputs"]:
            readers.setdefault(entry[0], []).append(i)
    for i, node in enumerate(nodes):
        if node["op"] != "BatchNormApply":
            continue
        rs = readers.get(i, [])
        assert len(rs) != 1 or nodes[rs[0]]["op"] != "IGCConv", node["name"]
    fused_convs = [n for n in nodes if n["op"] == "IGCConv" and "in_act" in n.get("attrs", {})]
    assert {n["attrs"]["kernel"] for n in fused_convs} == {"(1, 1)", "(3, 3)"}
    # All 17 blocks' linear convs among them, and as many as applies left the graph.
    assert sum(n["name"].endswith("linear-conv2d") for n in fused_convs) == 17
    moved = ops_of(symbol).count("BatchNormApply") - ops_of(fused).count("BatchNormApply")
    assert moved == len(fused_convs)


def test_switch_off_returns_the_symbol_as_built(ops, monkeypatch):
    symbol = network.get_symbol("mobilenetv2_cifar", 10)
    monkeypatch.setenv("IGC_FUSE_BATCHNORM", "0")
    assert network.fuse_input_batchnorms(symbol) is symbol
    monkeypatch.delenv("IGC_FUSE_BATCHNORM")
    assert network.fuse_input_batchnorms(symbol) is not symbol
    plain = network.get_symbol("mobilenetv2_cifar", 10, conv_impl="mxnet")
    assert network.fuse_input_batchnorms(plain) is plain  # no plugin BatchNorm: nothing to do


def test_moments_switch_off_keeps_the_batchnormmoments(ops, monkeypatch):
    symbol = network.get_symbol("mobilenetv2_cifar", 10)
    monkeypatch.setenv("IGC_FUSE_MOMENTS", "0")
    fused = network.fuse_input_batchnorms(symbol)
    assert ops_of(fused).count("BatchNormMoments") == ops_of(symbol).count("BatchNormMoments")
    assert '"moments"' not in fused.tojson() and '"in_act"' in fused.tojson()
    monkeypatch.delenv("IGC_FUSE_MOMENTS")
    assert '"moments"' in network.fuse_input_batchnorms(symbol).tojson()


def test_each_fusion_can_be_left_out(ops):
    """pointwise=False keeps the applies before the 1x1 convs, moments=False the statistics."""
    symbol = network.get_symbol("mobilenetv2_cifar", 10)

    def fused_kernels(graph):
        return [n["attrs"]["kernel"] for n in json.loads(graph.tojson())["nodes"]
                if n["op"] == "IGCConv" and "in_act" in n.get("attrs", {})]
    full = network.fuse_input_batchnorms(symbol)
    no_pointwise = network.fuse_input_batchnorms(symbol, pointwise=False)
    no_moments = network.fuse_input_batchnorms(symbol, moments=False)
    assert "(1, 1)" in fused_kernels(full) and "(1, 1)" not in fused_kernels(no_pointwise)
    assert fused_kernels(no_moments) == fused_kernels(full)
    assert fused_kernels(no_pointwise) == [k for k in fused_kernels(full) if k != "(1, 1)"]
    assert "BatchNormMoments" not in ops_of(no_pointwise)  # the stem's too (an IGCConv now)
    assert ops_of(no_moments).count("BatchNormMoments") == ops_of(symbol).count("BatchNormMoments")


def test_training_runs_the_fused_graph_and_saves_the_built_one(ops, tmp_path, monkeypatch):
    """The Module that train_model.py binds runs the fused graph; the checkpoint's symbol is
    the network as built, whose parameters it holds."""
    import training.loop as loop
    bound = []
    real_module = mx.mod.Module

    def recording_module(symbol, *args, **kwargs):
        bound.append(symbol)
        return real_module(symbol, *args, **kwargs)

    monkeypatch.setattr(loop.mx.mod, "Module", recording_module)
    import train_model
    from records import cpu_args, make_demo
    demo = make_demo(tmp_path / "demo", 80, 40)
    prefix = tmp_path / "m"
    train_model.main(cpu_args(demo, prefix, "--num-epochs", "1", "--batch-size", "8"))
    assert any('"in_act"' in s.tojson() for s in bound)
    saved = open(f"{prefix}-symbol.json").read()
    assert '"in_act"' not in saved and '"BatchNormApply"' in saved
    assert os.path.isfile(f"{prefix}-0001.params")
