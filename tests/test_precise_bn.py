"""--precise-bn: every BatchNorm's running statistics recomputed from training batches with the
current weights (training/precise_bn.py), against a numpy reference of training-mode BatchNorm."""
import os

import mxnet as mx
import numpy as np
import pytest

import train_model
from network import layers
from records import cpu_args, read_params
from training import precise_bn

EPS = 2e-5


def two_batchnorms(native):
    """data -> BN + ReLU (bn1) -> BN (bn2): bn2's input depends on bn1 normalising with its
    batch statistics."""
    data = mx.sym.var("data")
    x = layers.batchnorm(data, "bn1", eps=EPS, act="relu", act_name="relu1", native=native)
    return layers.batchnorm(x, "bn2", eps=EPS, native=native)


def reference(batches, gamma, beta):
    """Per BatchNorm, the average over batches of the batch mean and biased batch variance of
    its input, bn1 normalising each batch with its own statistics."""
    stats = {"bn1": [], "bn2": []}
    for x in batches:
        m1, v1 = x.mean((0, 2, 3)), x.var((0, 2, 3))
        shape = (1, -1, 1, 1)
        y = np.maximum(gamma.reshape(shape) * (x - m1.reshape(shape)) /
                       np.sqrt(v1.reshape(shape) + EPS) + beta.reshape(shape), 0)
        stats["bn1"].append((m1, v1))
        stats["bn2"].append((y.mean((0, 2, 3)), y.var((0, 2, 3))))
    return {name: tuple(np.mean([s[i] for s in rows], axis=0) for i in (0, 1))
            for name, rows in stats.items()}


@pytest.mark.parametrize("native", [False, True], ids=["mxnet-bn", "plugin-bn"])
def test_precise_bn_averages_the_training_mode_batch_statistics(ops, native):
    rng = np.random.RandomState(0)
    symbol = two_batchnorms(native)
    channels = 5
    gamma, beta = rng.uniform(0.5, 2, channels), rng.uniform(-1, 1, channels)
    args = {"bn1_gamma": gamma, "bn1_beta": beta, "bn2_gamma": np.ones(channels),
            "bn2_beta": np.zeros(channels)}
    aux = {f"{bn}_moving_{k}": np.full(channels, v) for bn in ("bn1", "bn2")
           for k, v in (("mean", 7.0), ("var", 9.0))}
    batches = [rng.normal(rng.uniform(-3, 3, (1, channels, 1, 1)), 2, (4, channels, 6, 6))
               for _ in range(4)]
    reader = (mx.io.DataBatch([mx.nd.array(x)], []) for x in batches)
    new = precise_bn.recompute(symbol, {k: mx.nd.array(v) for k, v in args.items()},
                               {k: mx.nd.array(v) for k, v in aux.items()}, reader, mx.cpu(),
                               max_batches=3)
    expected = reference(batches[:3], gamma, beta)
    for bn, (mean, var) in expected.items():
        np.testing.assert_allclose(new[f"{bn}_moving_mean"].asnumpy(), mean, rtol=1e-4,
                                   atol=1e-5)
        np.testing.assert_allclose(new[f"{bn}_moving_var"].asnumpy(), var, rtol=1e-4)


def test_precise_bn_finds_every_batchnorm_of_a_zoo_network(ops):
    import network
    symbol = network.get_symbol("igcv3_cifar", 10, depth_multiplier=0.5)
    found = precise_bn.batchnorm_nodes(symbol)
    moving = [n for n in symbol.list_auxiliary_states() if n.endswith("_moving_mean")]
    assert sorted(mean for _, mean, _ in found) == sorted(moving)


def test_precise_bn_flag_changes_only_the_running_statistics(ops, small_demo_dir, tmp_path):
    """Same seed with and without --precise-bn: identical weights (it never touches training),
    other running statistics (the recomputed ones, which the checkpoint keeps)."""
    saved = {}
    for flag in ("0", "2"):
        prefix = tmp_path / f"pbn{flag}" / "model"
        train_model.main(cpu_args(small_demo_dir, prefix, "--num-epochs", "1",
                                  "--batch-size", "32", "--precise-bn", flag))
        saved[flag] = read_params(f"{prefix}-0001.params")
        assert os.path.isfile(f"{prefix}-0001.params")
    plain, precise = saved["0"], saved["2"]
    for name in plain:
        if name.startswith("arg:"):
            np.testing.assert_array_equal(plain[name], precise[name], err_msg=name)
    moving = [n for n in plain if n.startswith("aux:")]
    assert moving and all(not np.allclose(plain[n], precise[n]) for n in moving)


def test_precise_bn_rejects_a_negative_count(capsys):
    with pytest.raises(SystemExit):
        train_model.main(["--precise-bn", "-1"])
    assert "--precise-bn: expected an integer >= 0, got '-1'" in capsys.readouterr().err


def test_score_precise_bn_recomputes_before_scoring(ops, small_demo_dir, tmp_path, capsys):
    import shutil

    from tools import score
    prefix = tmp_path / "run" / "model"
    train_model.main(cpu_args(small_demo_dir, prefix, "--num-epochs", "1", "--batch-size", "32"))
    saved = score.main(["--model-prefix", str(prefix), "--gpus", ""])
    precise = score.main(["--model-prefix", str(prefix), "--gpus", "", "--precise-bn", "3"])
    assert precise["images"] == saved["images"] == 100
    assert precise["loss"] != saved["loss"]

    bare = tmp_path / "without_train"
    shutil.copytree(small_demo_dir, bare)
    for suffix in (".rec", ".idx"):
        os.remove(bare / f"train{suffix}")
    with pytest.raises(SystemExit):
        score.main(["--model-prefix", str(prefix), "--gpus", "", "--data-dir", str(bare),
                    "--precise-bn", "3"])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train.rec not found" in err[0]
