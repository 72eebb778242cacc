"""benchmarks/peers: each PyTorch peer has exactly the MXNet graph's parameter count and, with the
MXNet weights copied across by position, gives the MXNet graph's inference logits (same layers,
same permutation, same BN placement). torch is a test requirement (requirements-test.txt)."""
import os
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import network  # noqa: E402
import peers  # noqa: E402
import utility  # noqa: E402
from peers import mxnet_semantics  # noqa: E402

# (network, num_classes, config): the benchmarked configurations and a few others.
CASES = [
    ("plain_igc", 10, dict(depth=38, primary_partition=24, secondary_partition=2)),
    ("plain_igc", 10, dict(depth=8, primary_partition=8, secondary_partition=2)),
    ("resnet_igc", 10, dict(depth=38, primary_partition=24, secondary_partition=2)),
    ("resnet_igc", 10, dict(depth=20, primary_partition=24, secondary_partition=2)),
    ("igcv3_cifar", 10, dict(depth_multiplier=1.0)),
    ("igcv3_cifar", 100, dict(depth_multiplier=0.5)),
    ("mobilenetv2_cifar", 10, dict()),
    ("igcv3", 1000, dict()),
    ("mobilenetv2", 1000, dict()),
    ("mobilenetv2", 1000, dict(t1_expansion=False)),
    ("resnet_igc_imgnet_d18", 1000, dict()),
]
# The authors' figures (IGCV1 counting tool, released IGCV3 / MobileNetV2 graphs; docs/zoo.md),
# independent of both implementations.
AUTHORS_COUNTS = {("plain_igc", 38): 317_242, ("resnet_igc", 38): 325_690,
               ("resnet_igc", 20): 164_410, ("igcv3", None): 3_491_688,
               ("mobilenetv2", None): 3_505_960}


def _id(case):
    name, classes, config = case
    return f"{name}-{classes}-" + "-".join(f"{k}={v}" for k, v in config.items())


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_peer_has_the_mxnet_graphs_parameter_count(ops, case):
    name, classes, config = case
    module = peers.build(name, classes, **config)
    counted = peers.check_param_count(name, module, classes, **config)
    anchor = AUTHORS_COUNTS.get((name, config.get("depth")))
    if anchor is not None and config.get("t1_expansion", True):
        assert counted == anchor


def test_every_benchmarked_family_has_a_peer():
    assert set(peers.PEERS) <= set(network.list_networks())
    assert {"plain_igc", "resnet_igc", "igcv3_cifar", "mobilenetv2_cifar", "igcv3",
            "mobilenetv2", "resnet_igc_imgnet_d18"} <= set(peers.PEERS)


def test_unknown_peer_names_the_valid_ones():
    with pytest.raises(ValueError, match="no PyTorch peer for 'plain'.*igcv3"):
        peers.build("plain", 10)


def test_param_count_mismatch_is_reported(ops):
    module = peers.build("plain_igc", 10, depth=8)
    with pytest.raises(AssertionError, match=r"MXNet graph has [\d,]+ parameters, peer 48,442"):
        peers.check_param_count("plain_igc", module, 10, depth=8, primary_partition=8)


def _random_weights(symbol, data_shape, rng):
    arg_shapes, _, aux_shapes = symbol.infer_shape(data=data_shape)
    args = {}
    for name, shape in zip(symbol.list_arguments(), arg_shapes):
        if name == "data" or name.endswith("_label"):
            continue
        if name.endswith("_gamma"):
            args[name] = rng.uniform(0.2, 0.6, shape)
        elif name.endswith(("_beta", "_bias")):
            args[name] = rng.uniform(-0.2, 0.2, shape)
        else:
            args[name] = rng.normal(0, (1.0 / np.prod(shape[1:])) ** 0.5, shape)
    aux = {}
    for name, shape in zip(symbol.list_auxiliary_states(), aux_shapes):
        aux[name] = (rng.uniform(-0.2, 0.2, shape) if name.endswith("_mean")
                     else rng.uniform(0.5, 1.5, shape))
    return args, aux


@pytest.mark.parametrize("case", [c for c in CASES if c[2].get("depth") != 38], ids=_id)
def test_peer_computes_the_mxnet_graphs_inference_logits(ops, case):
    import mxnet as mx
    name, classes, config = case
    size = network.network_info(name)["input_size"]
    shape = (2, 3, size, size)
    symbol = network.get_symbol(name, classes, **config)
    fc = "fc" if name.startswith(("igcv3", "mobilenetv2")) else "fc_score"
    logits = symbol.get_internals()[f"{fc}_output"]
    rng = np.random.RandomState(0)
    args, aux = _random_weights(symbol, shape, rng)
    x = rng.uniform(-1, 1, shape).astype(np.float32)
    exe = logits.bind(mx.cpu(), {"data": mx.nd.array(x), **{k: mx.nd.array(v)
                                                             for k, v in args.items()}},
                      aux_states={k: mx.nd.array(v) for k, v in aux.items()}, grad_req="null")
    expected = exe.forward(is_train=False)[0].asnumpy()

    module = peers.build(name, classes, **config)
    mxnet_semantics.copy_mxnet_weights(module, args, aux)
    module.eval()
    with torch.no_grad():
        got = module(torch.from_numpy(x)).numpy()
    scale = np.abs(expected).max()
    assert scale > 0
    np.testing.assert_allclose(got / scale, expected / scale, rtol=0, atol=1e-4)
    assert utility.count_params(symbol, shape)["total"] == peers.param_count(module)
