"""network.get_features: every network's backbone (stage outputs at the plan's widths and
resolutions, the pooled vector), and a Gluon SymbolBlock of it that loads a checkpoint by name
and runs forward and backward (checked against finite differences)."""
import mxnet as mx
import numpy as np
import pytest

import network


@pytest.mark.parametrize("name", network.list_networks())
def test_stage_outputs_have_the_plan_widths_and_resolutions(name, ops):
    size = network.network_info(name)["input_size"]
    features = network.get_features(name)
    rows = network.get_plan(name)
    assert list(features) == [row.stage for row in rows] + ["pool"]
    scale = 1
    for row in rows:
        scale *= row.stride
        _, (shape,), _ = features[row.stage].infer_shape(data=(2, 3, size, size))
        assert shape == (2, row.width, size // scale, size // scale), row
    _, (pooled,), _ = features["pool"].infer_shape(data=(2, 3, size, size))
    assert pooled == (2, rows[-1].width)
    # The backbone has exactly the classification network's arguments, minus the classifier.
    group = mx.sym.Group(list(features.values()))
    full = network.get_symbol(name, 10)
    classifier = {n for n in full.list_arguments() if n.startswith("fc")} | {"softmax_label"}
    assert set(group.list_arguments()) == set(full.list_arguments()) - classifier


# Gluon warns that it cannot type `data` before the first call; the call types it.
pytestmark = pytest.mark.filterwarnings("ignore:Cannot decide type")
SMALL = dict(depth=8, primary_partition=4, secondary_partition=2)  # IGCConv and Reorder inside


@pytest.fixture
def checkpoint(tmp_path):
    symbol = network.get_symbol("plain_igc", 10, **SMALL)
    arg_shapes, _, aux_shapes = symbol.infer_shape(data=(1, 3, 32, 32))
    rng = np.random.RandomState(0)
    arg_params = {n: mx.nd.array(rng.normal(0, 0.3, s)) for n, s in
                  zip(symbol.list_arguments(), arg_shapes) if n not in ("data", "softmax_label")}
    aux_params = {n: mx.nd.array(rng.uniform(0.5, 1.5, s)) for n, s in
                  zip(symbol.list_auxiliary_states(), aux_shapes)}
    prefix = str(tmp_path / "model")
    mx.model.save_checkpoint(prefix, 3, symbol, arg_params, aux_params)
    return symbol, arg_params, aux_params, f"{prefix}-0003.params"


def symbol_block(params_file, dtype="float32"):
    # The plugin's BatchNorm is float32-only: a float64 backbone takes MXNet's ops throughout.
    config = dict(SMALL, conv_impl="mxnet") if dtype == "float64" else SMALL
    features = network.get_features("plain_igc", **config)
    block = mx.gluon.SymbolBlock(list(features.values()), mx.sym.var("data"))
    # The checkpoint also holds the classifier: ignore_extra drops it.
    block.collect_params().load(params_file, ctx=mx.cpu(), ignore_extra=True)
    block.cast(dtype)
    return list(features), block


def test_symbol_block_forward_equals_the_classification_network_internals(checkpoint, ops):
    symbol, arg_params, aux_params, params_file = checkpoint
    names, block = symbol_block(params_file)
    data = np.random.RandomState(1).uniform(-1, 1, (3, 3, 32, 32)).astype(np.float32)
    outputs = dict(zip(names, (o.asnumpy() for o in block(mx.nd.array(data)))))
    # Reference: the last stage of the full network from a Module, pooled in numpy.
    internals = symbol.get_internals()["g3_b2_relu_output"]
    exe = internals.simple_bind(mx.cpu(), grad_req="null", data=data.shape)
    exe.copy_params_from(arg_params, aux_params, allow_extra_params=True)
    last = exe.forward(is_train=False, data=mx.nd.array(data))[0].asnumpy()
    np.testing.assert_allclose(outputs["g3"], last, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(outputs["pool"], last.mean(axis=(2, 3)), rtol=1e-5, atol=1e-6)


def test_symbol_block_backward_matches_finite_differences(checkpoint, ops):
    _, _, _, params_file = checkpoint
    names, block = symbol_block(params_file, "float64")
    rng = np.random.RandomState(2)
    data = mx.nd.array(rng.uniform(-1, 1, (2, 3, 32, 32)), dtype="float64")
    weights = [mx.nd.array(rng.normal(size=o.shape), dtype="float64")
               for o in block(data)]

    def objective(x):
        return sum((o * w).sum() for o, w in zip(block(x), weights))

    # Training mode (batch statistics in BN), as when the backbone is fine-tuned: MXNet's BN
    # backward always differentiates the batch-statistics function.
    data.attach_grad()
    with mx.autograd.record(train_mode=True):
        value = objective(data)
    value.backward()
    direction = mx.nd.array(rng.normal(size=data.shape), dtype="float64")
    eps = 1e-6  # small enough that no ReLU input changes sign (1e-5 already does)
    with mx.autograd.train_mode():
        numeric = (objective(data + eps * direction) -
                   objective(data - eps * direction)) / (2 * eps)
    analytic = (data.grad * direction).sum()
    np.testing.assert_allclose(analytic.asscalar(), numeric.asscalar(), rtol=1e-6)
    # Every backbone weight gets a gradient (fine-tuning the backbone works).
    grads = {name: p.grad() for name, p in block.collect_params().items()
             if p.grad_req != "null"}
    assert grads and all(float(g.abs().sum().asscalar()) > 0 for g in grads.values())
    assert "g1_b1_conv1_weight" in grads and names[-1] == "pool"
