"""ONNX export: every registered network, run in ONNX Runtime, gives the probabilities of
MXNet's inference graph (optimize_for_inference(fuse_blocks=False), and the training graph in
inference mode; max abs difference <= 1e-4) with and without BN folding, with a dynamic batch;
folded, no BatchNormalization is left; bad targets are one line and leave no file."""
import os
import subprocess
import sys

import mxnet as mx
import numpy as np
import pytest

import network

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
from network.graph.onnx import to_onnx  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPORT = os.path.join(ROOT, "tools", "export_onnx.py")
TOLERANCE = 1e-4
NUM_CLASSES = 10


def random_params(symbol, shape, seed):
    """Weights that keep a random deep net well conditioned (He-scaled convs, BN gamma below 1,
    random BN statistics so that folding has something to fold), then the classifier scaled
    so the logits have unit spread: the probabilities are far from one-hot, so a wrong
    channel anywhere shows in them."""
    rng = np.random.RandomState(seed)
    arg_shapes, _, aux_shapes = symbol.infer_shape(data=shape)
    arg_params, aux_params = {}, {}
    for name, s in zip(symbol.list_arguments(), arg_shapes):
        if name in ("data", "softmax_label"):
            continue
        if name.endswith("_gamma"):
            value = rng.uniform(0.3, 0.8, s)
        elif name.endswith(("_beta", "_bias")):
            value = rng.normal(0, 0.1, s)
        else:
            value = rng.normal(0, np.sqrt(2.0 / np.prod(s[1:])), s)
        arg_params[name] = mx.nd.array(value)
    for name, s in zip(symbol.list_auxiliary_states(), aux_shapes):
        value = rng.uniform(0.5, 2, s) if name.endswith("_var") else rng.normal(0, 0.1, s)
        aux_params[name] = mx.nd.array(value)
    data = rng.uniform(-2, 2, shape).astype(np.float32)
    fc = next(n[:-len("_weight")] for n in arg_params
              if n.startswith("fc") and n.endswith("_weight"))
    logits = forward(symbol.get_internals()[fc + "_output"], arg_params, aux_params, data)
    for key in (fc + "_weight", fc + "_bias"):
        arg_params[key] = arg_params[key] / float(logits.std())
    return arg_params, aux_params, data


def forward(symbol, arg_params, aux_params, data):
    """MXNet inference (its own executor, is_train=False)."""
    exe = symbol.simple_bind(mx.cpu(), grad_req="null", data=data.shape)
    exe.copy_params_from(arg_params, aux_params, allow_extra_params=True)
    return exe.forward(is_train=False, data=mx.nd.array(data))[0].asnumpy()


def session_of(model):
    # No spin-waiting threads: the test machine's cores are shared.
    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def run_onnx(model, data):
    session = session_of(model.SerializeToString())
    assert [i.name for i in session.get_inputs()] == ["data"]
    assert [o.name for o in session.get_outputs()] == ["probabilities"]
    return session.run(None, {"data": data})[0]


def case(name, config=None):
    kind = network.network_info(name)["dataset_kind"]
    size = network.network_info(name)["input_size"]
    # ImageNet nets at 224 with a batch of 1 (seconds); CIFAR ones at batch 2.
    return name, dict(config or {}), (1 if kind == "imagenet" else 2, 3, size, size)


CASES = [case(name) for name in network.list_networks()] + [
    # The other implementations of the same unit: fused IGCConv and the pure-symbol permutation.
    case("plain_igc", dict(conv_impl="igc")),
    case("plain_igc", dict(conv_impl="mxnet", permutation="reshape")),
    case("resnet_igc", dict(conv_impl="igc", depth=8)),
    case("igcv3_cifar", dict(permutation="reshape", depth_multiplier=0.5)),
]


@pytest.mark.parametrize("name,config,shape", CASES,
                         ids=[f"{n}-{'-'.join(map(str, c.values())) or 'default'}"
                              for n, c, _ in CASES])
def test_onnx_runtime_gives_mxnet_probabilities_for_every_network(name, config, shape, ops):
    symbol = network.get_symbol(name, NUM_CLASSES, **config)
    arg_params, aux_params, data = random_params(symbol, shape, seed=len(name))
    expected = forward(symbol, arg_params, aux_params, data)
    assert expected.max() < 0.9  # not one-hot
    for fold_bn in (False, True):
        model = to_onnx(symbol, arg_params, aux_params, shape[1:], fold_bn=fold_bn)
        ops_used = {node.op_type for node in model.graph.node}
        assert ("BatchNormalization" in ops_used) != fold_bn
        assert not ops_used & {"Reorder", "IGCConv"}
        got = run_onnx(model, data)
        # the graph that scoring and prediction run, and the training graph
        deployed = forward(*network.optimize_for_inference(
            symbol, arg_params, aux_params, fold_batchnorm=fold_bn, fuse_blocks=False), data)
        for want in (deployed, expected):
            assert np.abs(got - want).max() <= TOLERANCE, (fold_bn, np.abs(got - want).max())


def test_onnx_batch_dimension_is_dynamic(ops):
    symbol = network.get_symbol("resnet_igc", NUM_CLASSES, depth=8)
    arg_params, aux_params, data = random_params(symbol, (5, 3, 32, 32), seed=1)
    model = to_onnx(symbol, arg_params, aux_params, (3, 32, 32), fold_bn=True)
    for batch in (1, 5):
        np.testing.assert_allclose(run_onnx(model, data[:batch]),
                                   forward(symbol, arg_params, aux_params, data[:batch]),
                                   atol=TOLERANCE)


@pytest.mark.parametrize("name,config", [
    ("resnet_igc", dict(depth=8)),
    ("plain_igc", dict(depth=8, conv_impl="igc")),
    ("igcv3_cifar", dict(depth_multiplier=0.5)),
])
def test_onnx_height_and_width_are_dynamic_where_the_network_pools_globally(name, config, ops):
    symbol = network.get_symbol(name, NUM_CLASSES, **config)
    arg_params, aux_params, _ = random_params(symbol, (1, 3, 32, 32), seed=4)
    model = to_onnx(symbol, arg_params, aux_params, (3, 32, 32))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["N", 3, "H", "W"]
    for shape in ((2, 3, 32, 32), (1, 3, 40, 24), (1, 3, 64, 64)):
        data = np.random.RandomState(5).uniform(-2, 2, shape).astype(np.float32)
        np.testing.assert_allclose(run_onnx(model, data),
                                   forward(symbol, arg_params, aux_params, data), atol=TOLERANCE)


def test_onnx_keeps_the_exported_size_where_a_reshape_fixes_it(ops):
    symbol = network.get_symbol("plain_igc", NUM_CLASSES, depth=8, conv_impl="mxnet",
                                permutation="reshape")
    arg_params, aux_params, data = random_params(symbol, (1, 3, 32, 32), seed=6)
    model = to_onnx(symbol, arg_params, aux_params, (3, 32, 32))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["N", 3, 32, 32]
    with pytest.raises(Exception, match="Expected: 32"):
        run_onnx(model, np.zeros((1, 3, 40, 40), np.float32))


@pytest.mark.parametrize("interleave", [False, True])
def test_an_igcconv_with_fused_relu6_exports_as_conv_then_clip(interleave, ops):
    """IGCConv(act='relu6'), which optimize_for_inference makes of a stem conv + clip, exports
    as Conv -> Clip(0, 6) (-> the permutation) and ONNX Runtime gives MXNet's probabilities."""
    def classifier(act):
        conv = mx.sym.IGCConv(mx.sym.var("data"), mx.sym.var("conv0_weight"),
                              mx.sym.var("conv0_bias"), num_filter=8, kernel=(3, 3), pad=(1, 1),
                              num_group=2, interleave=interleave, act=act, name="conv0")
        pool = mx.sym.Pooling(conv, kernel=(1, 1), global_pool=True, pool_type="avg")
        fc = mx.sym.FullyConnected(mx.sym.flatten(pool), num_hidden=NUM_CLASSES, name="fc")
        return conv, mx.sym.SoftmaxOutput(fc, name="softmax")

    conv, symbol = classifier("relu6")
    shape = (2, 4, 9, 9)
    arg_params, aux_params, data = random_params(symbol, shape, seed=3)
    arg_params["conv0_weight"] = arg_params["conv0_weight"] * 20  # outputs past 6 and below 0
    pre = forward(classifier("none")[0], arg_params, aux_params, data)
    assert (pre > 6).any() and (pre < 0).any()
    model = to_onnx(symbol, arg_params, aux_params, shape[1:])
    assert [n.op_type for n in model.graph.node][:2] == ["Conv", "Clip"]
    got, want = run_onnx(model, data), forward(symbol, arg_params, aux_params, data)
    assert np.abs(got - want).max() <= TOLERANCE
    # the comparison can fail: the same graph without the clip
    unclipped = forward(classifier("none")[1], arg_params, aux_params, data)
    assert np.abs(got - unclipped).max() > 100 * TOLERANCE


def test_a_wrong_permutation_in_the_onnx_graph_is_caught_by_the_comparison(ops):
    # The comparison above can fail: swap g and C/g in one exported permutation.
    symbol = network.get_symbol("plain_igc", NUM_CLASSES, depth=8, conv_impl="mxnet")
    arg_params, aux_params, data = random_params(symbol, (2, 3, 32, 32), seed=2)
    model = to_onnx(symbol, arg_params, aux_params, (3, 32, 32))
    split = next(t for t in model.graph.initializer if t.name.endswith("reorder1_split_head"))
    values = onnx.numpy_helper.to_array(split).copy()
    values[1], values[2] = values[2], values[1]
    split.CopyFrom(onnx.numpy_helper.from_array(values, split.name))
    assert np.abs(run_onnx(model, data) - forward(symbol, arg_params, aux_params, data)).max() \
        > 100 * TOLERANCE


def run_export(*argv):
    return subprocess.run([sys.executable, EXPORT, *argv], capture_output=True, text=True,
                          timeout=300)


def test_export_tool_writes_a_checkpoint_that_onnx_runtime_runs(tmp_path, ops):
    symbol = network.get_symbol("plain_igc", 10, depth=8, primary_partition=4,
                                secondary_partition=2)
    arg_params, aux_params, data = random_params(symbol, (3, 3, 32, 32), seed=3)
    prefix = str(tmp_path / "model")
    mx.model.save_checkpoint(prefix, 1, symbol, arg_params, aux_params)
    out = tmp_path / "model.onnx"
    result = run_export("--model-prefix", prefix, "--load-epoch", "1", "--network", "plain_igc",
                        "--depth", "8", "--primary-partition", "4", "--secondary-partition",
                        "2", "--dataset", "demo", "--fold-bn", "-o", str(out))
    assert result.returncode == 0, result.stderr
    session = session_of(str(out))
    np.testing.assert_allclose(session.run(None, {"data": data})[0],
                               forward(symbol, arg_params, aux_params, data), atol=TOLERANCE)
    assert [p for p in os.listdir(tmp_path) if ".tmp" in p] == []


def test_export_without_weights_uses_a_fresh_initialisation(tmp_path, ops):
    out = tmp_path / "igcv3.onnx"
    result = run_export("--network", "igcv3_cifar", "--depth-multiplier", "0.5", "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert "random weights" in result.stdout
    model = onnx.load(str(out))
    onnx.checker.check_model(model)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["N", 3, "H", "W"]


def test_export_without_weights_takes_no_class_count_from_records_lying_around(tmp_path, ops):
    # A synsets.txt of 3 classes in the data folder must not size a randomly initialised model.
    (tmp_path / "synsets.txt").write_text("a\nb\nc\n")
    out = tmp_path / "plain.onnx"
    result = run_export("--network", "plain_igc", "--depth", "8", "--data-dir", str(tmp_path),
                        "-o", str(out))
    assert result.returncode == 0, result.stderr
    dims = onnx.load(str(out)).graph.output[0].type.tensor_type.shape.dim
    assert dims[1].dim_value == 10  # cifar10, the dataset default
    result = run_export("--network", "plain_igc", "--depth", "8", "--num-classes", "7",
                        "-o", str(out))
    assert result.returncode == 0, result.stderr
    model = onnx.load(str(out))
    assert model.graph.output[0].type.tensor_type.shape.dim[1].dim_value == 7
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["num_classes"] == "7" and meta["class_names"] == str(list(map(str, range(7)))) \
        .replace("'", '"')


@pytest.mark.parametrize("target,message", [
    ("missing/x.onnx", "does not exist"),
    ("file.txt/x.onnx", "does not exist"),
    ("/proc/x.onnx", "cannot write it"),
])
def test_an_unwritable_target_is_one_line_and_leaves_no_file(target, message, tmp_path, ops):
    (tmp_path / "file.txt").write_text("a file, not a folder")
    path = target if os.path.isabs(target) else str(tmp_path / target)
    result = run_export("--network", "plain_igc", "--depth", "8", "-o", path)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr, \
        result.stderr
    assert not os.path.exists(path)


def test_a_checkpoint_of_another_network_is_one_line(tmp_path, ops):
    symbol = network.get_symbol("plain", 10, depth=8)
    arg_params, aux_params, _ = random_params(symbol, (1, 3, 32, 32), seed=4)
    prefix = str(tmp_path / "plain")
    mx.model.save_checkpoint(prefix, 1, symbol, arg_params, aux_params)
    out = tmp_path / "x.onnx"
    result = run_export("--params", f"{prefix}-0001.params", "--network", "plain_igc", "-o",
                        str(out))
    assert result.returncode == 2 and "does not fit the network" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not out.exists()


RELEASED_GRAPHS = ["resnet_gcwf_noshare_imagenet_d18b100-symbol.json", "igcv3-symbol.json"]


@pytest.mark.parametrize("symbol_file", RELEASED_GRAPHS)
def test_the_authors_released_graphs_export_too(symbol_file, released_symbols_dir, ops):
    # Their own files: Reorder nodes with `workspace` (IGCV1) and the Reshape/SwapAxis chain
    # (IGCV3), both exported as the same permutation and folded through.
    symbol = mx.sym.load(os.path.join(released_symbols_dir, symbol_file))
    arg_params, aux_params, data = random_params(symbol, (1, 3, 224, 224), seed=5)
    expected = forward(symbol, arg_params, aux_params, data)
    for fold_bn in (False, True):
        model = to_onnx(symbol, arg_params, aux_params, (3, 224, 224), fold_bn=fold_bn)
        assert ("BatchNormalization" in {n.op_type for n in model.graph.node}) != fold_bn
        assert np.abs(run_onnx(model, data) - expected).max() <= TOLERANCE
