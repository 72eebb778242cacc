"""Training here equals a PyTorch reference step for step.

The project's own training code (train_model.py's flag parsing and recipe, `training.loop`'s
Module, initialisation, optimizer, weight-decay rule and learning-rate schedule, `train_step`)
and the PyTorch peer of the same network (benchmarks/peers, configured by
`peers.mxnet_semantics` to the authors' MXNet semantics) start from the same weights and take
the same fixed batches (no augmentation). Per-step losses and, after the last step, every weight
and BN running statistic must agree.

Steps: 2 updates per epoch with `--lr-steps 1`, so updates 3 and 4 run at a tenth of the rate
(the step across a learning-rate drop, where MXNet 1.9's own 'nag' and 'sgd' differ from
PyTorch's). Weight decay is the authors' rule (every weight, bias, gamma and beta), magnified to
5e-3 so that leaving it off one kind of parameter moves that kind far beyond rounding.

Tolerance. In float32 the two differ by rounding (other summation orders), about 1e-7 at step 1;
but a ReLU/ReLU6 input that rounds to the other side of 0 in one implementation flips that
element's gradient, which the BatchNorm backward spreads over its channel and everything below,
so a few steps of a small net drift by up to a few percent of what training moved (seen: 2e-2 in
igcv3_cifar). That is too coarse to see a semantic difference, so the semantics are checked in
float64 (the same code path and kernels, bound with float64 arrays), where rounding is 1e-16
and a flip needs an input within 1e-15 of a kink. MXNet's fused update ops take the rate,
momentum and decay as float32 (the twin rounds them alike), which leaves the runs about 1e-8
apart: losses within 1e-8 relative, and every kind of array within 1e-6 of its change over the
run (`drift`). Planted semantic differences are far outside: weight decay left off the biases
drifts the biases by 5e-4 to 1e-3, MXNet 1.9's own Nesterov form every kind by about 0.4,
against 1e-8 for the project (plain_igc, igcv3_cifar). float32 is checked too, at a rate
(0.02) where the runs stay close, with tolerances (1e-2, 1e-1) that catch a wrong kernel.
"""
import os
import sys

import mxnet as mx
import numpy as np
import pytest
import torch

import train_model
from records import make_records
from training import loop, recipes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import peers  # noqa: E402
from peers import mxnet_semantics as twin  # noqa: E402

BATCH = 8
STEPS_PER_EPOCH = 2
NUM_UPDATES = 4
WD = 5e-3
# (loss rtol, drift) per dtype: see the module's docstring.
TOLERANCE = {"float64": (1e-8, 1e-6), "float32": (1e-2, 1e-1)}
CLASSES = 10

FAMILIES = {
    "plain_igc": ["--network", "plain_igc", "--depth", "8", "--primary-partition", "4",
                  "--secondary-partition", "2"],
    "resnet_igc": ["--network", "resnet_igc", "--depth", "8", "--primary-partition", "4",
                   "--secondary-partition", "2"],
    "igcv3_cifar": ["--network", "igcv3_cifar", "--depth-multiplier", "0.5",
                    "--width-multiplier", "0.25"],
    "mobilenetv2_cifar": ["--network", "mobilenetv2_cifar", "--width-multiplier", "0.25"],
}


@pytest.fixture(scope="module")
def records_dir(tmp_path_factory):
    """Record files for the flag checks only: the steps below feed fixed arrays."""
    directory = tmp_path_factory.mktemp("parity")
    make_records(directory, "train", [i % CLASSES for i in range(2 * BATCH)])
    make_records(directory, "test", list(range(CLASSES)))
    return str(directory)


def fixed_batches(dtype):
    """Learnable batches (a pattern per class plus noise): the loss falls, so float32 rounding
    is not amplified by a diverging run."""
    rng = np.random.RandomState(7)
    patterns = rng.uniform(-1, 1, (CLASSES, 3, 32, 32))
    batches = []
    for _ in range(NUM_UPDATES):
        labels = rng.randint(0, CLASSES, BATCH)
        x = patterns[labels] + 0.5 * rng.standard_normal((BATCH, 3, 32, 32))
        batches.append((x.astype(dtype), labels))
    return batches


def project_trainer(family, records_dir, tmp_path, extra=(), dtype="float32"):
    argv = ["--dataset", "cifar10", "--data-dir", records_dir, "--gpus", "", "--rand-seed", "1",
            "--batch-size", str(BATCH), "--num-epochs", "2", "--lr-steps", "1", "--wd", str(WD),
            "--model-prefix", str(tmp_path / "model"), *FAMILIES[family], *extra]
    job, _ = train_model.build_job(argv)
    symbol = job.network.symbol()
    module, _ = loop.build_trainer(job, symbol, None, STEPS_PER_EPOCH, dtype=dtype)
    return job, symbol, module


def ordered_params(module, symbol):
    args, aux = module.get_params()
    arg_names = [n for n in symbol.list_arguments() if n not in ("data", "softmax_label")]
    return ({n: args[n].asnumpy() for n in arg_names},
            {n: aux[n].asnumpy() for n in symbol.list_auxiliary_states()})


def peer_of(job, args, aux, dtype):
    model = peers.build(job.network.name, CLASSES, **job.network.config).to(getattr(torch, dtype))
    twin.match_batchnorm(model)
    twin.copy_mxnet_weights(model, args, aux)
    return model


def train_both(family, records_dir, tmp_path, extra=(), dtype="float64"):
    """(mxnet losses, peer losses, mxnet weights, peer weights, initial weights)."""
    job, symbol, module = project_trainer(family, records_dir, tmp_path, extra, dtype)
    args0, aux0 = ordered_params(module, symbol)
    model = peer_of(job, args0, aux0, dtype)
    optim = job.optim
    optimizer = twin.make_optimizer(model, optim.optimizer, optim.lr, optim.momentum, optim.wd)
    boundaries = [s * STEPS_PER_EPOCH for s in optim.lr_steps]

    ours, theirs = [], []
    model.train()
    for update, (x, y) in enumerate(fixed_batches(dtype), 1):
        batch = mx.io.DataBatch([mx.nd.array(x, dtype=dtype)], [mx.nd.array(y, dtype=dtype)])
        probs = loop.train_step(module, batch)
        ours.append(-np.mean(np.log(probs[np.arange(BATCH), y])))

        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(torch.from_numpy(x)),
                                                 torch.from_numpy(y).long())
        loss.backward()
        twin.set_lr(optimizer, twin.lr_at(update, optim.lr, optim.lr_factor, boundaries))
        optimizer.step()
        theirs.append(loss.item())
    ours_w = ordered_params(module, symbol)
    theirs_w = twin.peer_weights(model, list(ours_w[0]), list(ours_w[1]))
    return np.array(ours), np.array(theirs), ours_w, theirs_w, (args0, aux0)


KINDS = ("_weight", "_bias", "_gamma", "_beta", "_moving_mean", "_moving_var")


def drift(ours, theirs, initial):
    """{kind: |ours - theirs| / |ours - initial|} over all arrays of a kind (L2 norms): how far
    the two runs are apart, relative to how far training moved that kind of array."""
    out = {}
    for kind in KINDS:
        apart = moved = 0.0
        for group in (0, 1):
            for name, a in ours[group].items():
                if name.endswith(kind):
                    a = a.astype(np.float64)
                    apart += np.sum((a - theirs[group][name]) ** 2)
                    moved += np.sum((a - initial[group][name]) ** 2)
        if moved:
            out[kind] = float(np.sqrt(apart / moved))
    return out


def test_parity_recipe_is_the_authors_cifar_recipe():
    """The twin takes its hyper-parameters from the job; these are the authors' values."""
    assert recipes.CIFAR_RECIPE["optimizer"] == "nag"
    assert recipes.CIFAR_RECIPE["momentum"] == 0.9
    assert recipes.CIFAR_RECIPE["lr"] == 0.1
    assert recipes.CIFAR_RECIPE["lr_factor"] == 0.1
    assert recipes.CIFAR_RECIPE["wd"] == 1e-4


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_parity_with_pytorch_step_for_step(ops, family, dtype, records_dir, tmp_path):
    extra = ["--lr", "0.02"] if dtype == "float32" else []
    ours, theirs, ours_w, theirs_w, initial = train_both(family, records_dir, tmp_path, extra,
                                                         dtype)
    loss_rtol, max_drift = TOLERANCE[dtype]
    np.testing.assert_allclose(ours, theirs, rtol=loss_rtol, err_msg=f"{family}: per-step losses")
    apart = drift(ours_w, theirs_w, initial)
    assert max(apart.values()) < max_drift, apart


def test_parity_sgd_across_a_learning_rate_drop(ops, records_dir, tmp_path):
    """MXNet's plain SGD (the IGCV3 ImageNet recipe's) folds the rate into its momentum."""
    ours, theirs, ours_w, theirs_w, initial = train_both(
        "igcv3_cifar", records_dir, tmp_path, ["--optimizer", "sgd"])
    loss_rtol, max_drift = TOLERANCE["float64"]
    np.testing.assert_allclose(ours, theirs, rtol=loss_rtol)
    apart = drift(ours_w, theirs_w, initial)
    assert max(apart.values()) < max_drift, apart
