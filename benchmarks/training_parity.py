"""Parity on real data: the project's training (train_model.py, the full recipe and augmentation)
and its PyTorch twin (benchmarks/peers configured by peers.mxnet_semantics, the same recipe,
its own data pipeline on the same images) trained from their own random initialisations,
several seeds each; the table gives the final top-1 per seed, the means and their difference.

    python benchmarks/training_parity.py                     # digits + demo, seeds 1-3
    python benchmarks/training_parity.py --quick             # one seed, fewer epochs
    python benchmarks/training_parity.py --datasets digits --seeds 1,2,3,4,5 --precise-bn 20

Data sets (made here, no download): `digits` is scikit-learn's 1,797 handwritten 8x8 digits,
scaled to 32x32 (4x4 blocks) grey RGB and written as a CIFAR-10 python archive (1,437 train /
360 test), then packed by `tools/make_rec.sh cifar10 --from`, exactly as CIFAR-10 is; `demo` is
`tools/make_rec.sh demo` (5,000 + 1,000 procedural images). With `--precise-bn N` each run is
also evaluated with BatchNorm statistics recomputed from N training batches (the project through
`train_model.py --precise-bn N`, which logs both; the twin likewise), and the per-epoch curves
show how the moving averages lag. Runs in the benchmark
environment (`make bench-venv`).
"""
import argparse
import contextlib
import io
import math
import os
import pickle
import statistics
import subprocess
import tarfile
import tempfile
import time

import numpy as np

import harness

ROOT = harness.ROOT
NETWORK = ["--network", "plain_igc", "--depth", "8", "--primary-partition", "8",
           "--secondary-partition", "2"]
CLASSES = 10


# --------------------------------------------------------------------------------------------
# Data


def _archive_member(tar, name, obj):
    data = pickle.dumps(obj, protocol=2)
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def make_digits(out):
    """scikit-learn's digits as a CIFAR-10 python archive, packed by make_rec.sh cifar10."""
    from sklearn.datasets import load_digits
    digits = load_digits()
    order = np.random.RandomState(0).permutation(len(digits.target))
    images = np.clip(digits.images[order] * 16, 0, 255).astype(np.uint8)
    big = images.repeat(4, axis=1).repeat(4, axis=2)  # 8x8 -> 32x32, 4x4 blocks
    rows = np.repeat(big.reshape(len(big), 1, 1024), 3, axis=1).reshape(len(big), 3072)
    labels = [int(v) for v in digits.target[order]]
    split = len(labels) * 4 // 5
    archive = os.path.join(out, "cifar-10-python.tar.gz")
    with tarfile.open(archive, "w:gz") as tar:
        folder = tarfile.TarInfo("cifar-10-batches-py")
        folder.type, folder.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(folder)
        parts = np.array_split(np.arange(split), 5)
        for i, part in enumerate(parts, 1):
            _archive_member(tar, f"cifar-10-batches-py/data_batch_{i}", {
                b"batch_label": f"digits {i}".encode(), b"data": rows[part],
                b"labels": [labels[j] for j in part],
                b"filenames": [f"digit_{j}.png".encode() for j in part]})
        test = np.arange(split, len(labels))
        _archive_member(tar, "cifar-10-batches-py/test_batch", {
            b"batch_label": b"digits test", b"data": rows[test],
            b"labels": [labels[j] for j in test],
            b"filenames": [f"digit_{j}.png".encode() for j in test]})
        _archive_member(tar, "cifar-10-batches-py/batches.meta", {
            b"label_names": [str(d).encode() for d in range(10)], b"num_cases_per_batch": 0,
            b"num_vis": 3072})
    records = os.path.join(out, "digits")
    subprocess.run([os.path.join(ROOT, "tools", "make_rec.sh"), "cifar10", "--from", archive,
                    "--no-verify", "--out", records], check=True, capture_output=True)
    return records


def make_demo(out):
    records = os.path.join(out, "demo")
    subprocess.run([os.path.join(ROOT, "tools", "make_rec.sh"), "demo", "--out", records],
                   check=True, capture_output=True)
    return records


def read_split(records, split):
    """(images N x 32 x 32 x 3 uint8 RGB, labels) of NAME.rec, in index order."""
    import mxnet as mx
    reader = mx.recordio.MXIndexedRecordIO(os.path.join(records, split + ".idx"),
                                           os.path.join(records, split + ".rec"), "r")
    images, labels = [], []
    for key in sorted(reader.keys):
        header, encoded = mx.recordio.unpack(reader.read_idx(key))
        images.append(mx.image.imdecode(encoded).asnumpy())  # RGB, by MXNet's own decoder
        labels.append(int(header.label))
    return np.stack(images), np.array(labels)


# --------------------------------------------------------------------------------------------
# The two implementations


def train_project(records, dataset, seed, epochs, mean, std, precise_bn, workdir):
    """(per-epoch validation top-1 % of train_model.py on these records with the moving-average
    BN statistics, the same with --precise-bn statistics or None)."""
    import train_model
    argv = ["--dataset", dataset, "--data-dir", records, "--gpus", "", "--rand-seed", str(seed),
            "--model-prefix", os.path.join(workdir, f"{dataset}-{seed}-{precise_bn}", "model"),
            "--num-epochs", str(epochs), "--log-iters", "100000", "--data-threads", "2", *NETWORK]
    if mean is not None:
        argv += ["--mean-rgb", ",".join(map(str, mean)), "--std-rgb", ",".join(map(str, std))]
    if precise_bn:
        argv += ["--precise-bn", str(precise_bn)]
    with contextlib.redirect_stdout(io.StringIO()):
        history = train_model.main(argv)
    if not precise_bn:
        return [h["val-acc"] for h in history], None
    return [h["val-ema-acc"] for h in history], [h["val-acc"] for h in history]


def _augment(rng, images, fill):
    """4-pixel pad (filled with the mean grey), random 32x32 crop, random mirror."""
    n = len(images)
    padded = np.full((n, 40, 40, 3), fill, dtype=np.uint8)
    padded[:, 4:36, 4:36] = images
    out = np.empty_like(images)
    for i in range(n):
        y, x = rng.randint(0, 9, 2)
        crop = padded[i, y:y + 32, x:x + 32]
        out[i] = crop[:, ::-1] if rng.randint(2) else crop
    return out


def _tensor(images, mean, std):
    import torch
    x = (images.astype(np.float32) - np.float32(mean)) / np.float32(std)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def _accuracy(model, images, labels, mean, std):
    import torch
    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(labels), 400):
            logits = model(_tensor(images[start:start + 400], mean, std))
            correct += int((logits.argmax(1).numpy() == labels[start:start + 400]).sum())
    model.train()
    return 100.0 * correct / len(labels)


def _precise_accuracy(model, train, test, rng, fill, mean, std, batches, batch_size):
    """Test top-1 with BatchNorm statistics recomputed from `batches` augmented training
    batches (the average of the batch statistics). As `train_model.py --precise-bn` does, the
    recomputed statistics stay: the moving averages of the next epoch continue from them."""
    import torch

    from peers import mxnet_semantics as twin
    norms = twin.batchnorms(model)
    momenta = [bn.momentum for bn in norms]
    for bn in norms:
        bn.running_mean.zero_()
        bn.running_var.zero_()
    order = rng.permutation(len(train[1]))
    with torch.no_grad():
        for k in range(batches):
            for bn in norms:
                bn.momentum = 1.0 / (k + 1)  # a running average of the batch statistics
            idx = order[(k * batch_size) % len(order):][:batch_size]
            model(_tensor(_augment(rng, train[0][idx], fill), mean, std))
    for bn, momentum in zip(norms, momenta):
        bn.momentum = momentum
    return _accuracy(model, *test, mean, std)


def train_twin(train, test, recipe, seed, precise_bn):
    """(per-epoch test top-1 %, per-epoch top-1 % with precise BN statistics or None)."""
    import torch

    import network
    import peers
    from peers import mxnet_semantics as twin
    torch.manual_seed(seed)
    rng = np.random.RandomState(seed)
    name, config = NETWORK[1], _config(NETWORK)
    model = twin.init_like_mxnet(twin.match_batchnorm(peers.build(name, CLASSES, **config)))
    assert peers.param_count(model) == peers.mxnet_param_count(name, CLASSES, **config)
    assert network.network_info(name)["input_size"] == 32
    optimizer = twin.make_optimizer(model, recipe["optimizer"], recipe["lr"],
                                    recipe["momentum"], recipe["wd"])
    batch, mean, std = recipe["batch_size"], recipe["mean"], recipe["std"]
    fill = int(round(sum(mean) / 3))
    steps = len(train[1]) // batch
    boundaries = [s * steps for s in recipe["lr_steps"]]
    loss_fn = torch.nn.CrossEntropyLoss()
    curve, precise, update = [], [] if precise_bn else None, 0
    model.train()
    for _ in range(recipe["epochs"]):
        order = rng.permutation(len(train[1]))
        for k in range(steps):
            idx = order[k * batch:(k + 1) * batch]
            x = _tensor(_augment(rng, train[0][idx], fill), mean, std)
            loss = loss_fn(model(x), torch.from_numpy(train[1][idx]).long())
            optimizer.zero_grad()
            loss.backward()
            update += 1
            twin.set_lr(optimizer, twin.lr_at(update, recipe["lr"], recipe["lr_factor"],
                                              boundaries))
            optimizer.step()
        curve.append(_accuracy(model, *test, mean, std))
        if precise_bn:
            precise.append(_precise_accuracy(model, train, test, rng, fill, mean, std,
                                              precise_bn, batch))
    return curve, precise


def _config(argv):
    keys = {"--depth": "depth", "--primary-partition": "primary_partition",
            "--secondary-partition": "secondary_partition"}
    return {keys[argv[i]]: int(argv[i + 1]) for i in range(2, len(argv), 2)}


# --------------------------------------------------------------------------------------------
# Report


def recipe_of(dataset, train_images, epochs):
    """The recipe both sides use: train_model.py's defaults for `dataset`, as resolved by its own
    parser (so the twin takes exactly what the project trains with)."""
    import train_model
    from training import job as job_module
    from training import recipes
    preset = recipes.CIFAR_DATASETS["demo" if dataset == "demo" else "cifar10"]
    if dataset == "demo":
        mean, std = preset["mean_rgb"], preset["std_rgb"]
    else:
        pixels = train_images.reshape(-1, 3).astype(np.float64)
        mean, std = tuple(pixels.mean(0)), tuple(pixels.std(0))
    parser = train_model.build_parser()
    args = parser.parse_args(["--num-epochs", str(epochs)])
    lr_steps = preset["lr_steps"] if dataset == "demo" and epochs == preset["num_epochs"] \
        else job_module.default_lr_steps(epochs)
    return dict(optimizer=args.optimizer, lr=args.lr, momentum=args.momentum, wd=args.wd,
                lr_factor=args.lr_factor, batch_size=args.batch_size, lr_steps=lr_steps,
                epochs=epochs, mean=mean, std=std)


def spread(values):
    return statistics.stdev(values) if len(values) > 1 else float("nan")


def summary_rows(label, ours, theirs):
    """Rows: per seed, then mean +- std of each side and the difference of means with its
    standard error."""
    rows = [[label, seed, f"{a:.2f}", f"{b:.2f}", f"{a - b:+.2f}"]
            for seed, a, b in zip(sorted(ours), [ours[s] for s in sorted(ours)],
                                  [theirs[s] for s in sorted(ours)])]
    a, b = list(ours.values()), list(theirs.values())
    diff = statistics.mean(a) - statistics.mean(b)
    se = math.sqrt(spread(a) ** 2 / len(a) + spread(b) ** 2 / len(b)) if len(a) > 1 else math.nan
    rows.append([label, "mean ± std", f"{statistics.mean(a):.2f} ± {spread(a):.2f}",
                 f"{statistics.mean(b):.2f} ± {spread(b):.2f}", f"{diff:+.2f} ± {se:.2f}"])
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default="digits,demo", help="comma list of digits, demo")
    parser.add_argument("--seeds", default="1,2,3", help="comma list of seeds")
    parser.add_argument("--digits-epochs", type=int, default=20)
    parser.add_argument("--demo-epochs", type=int, default=8)
    parser.add_argument("--precise-bn", type=int, default=0, metavar="N",
                        help="also evaluate with BN statistics from N training batches")
    parser.add_argument("--quick", action="store_true", help="seed 1, 10 digits / 4 demo epochs")
    parser.add_argument("--curves", action="store_true", help="print the per-epoch top-1 curves")
    args = parser.parse_args(argv)
    seeds = [1] if args.quick else [int(s) for s in args.seeds.split(",")]
    epochs = {"digits": 10 if args.quick else args.digits_epochs,
              "demo": 4 if args.quick else args.demo_epochs}
    datasets = [d for d in args.datasets.split(",") if d]
    unknown = sorted(set(datasets) - set(epochs))
    if unknown:
        parser.error(f"--datasets: unknown {', '.join(unknown)} (valid: digits, demo)")

    import torch
    torch.set_num_threads(os.cpu_count())
    harness.print_header("Training parity on real data: the project (train_model.py) vs its "
                         "PyTorch twin", "mxnet", "torch", "sklearn")
    print(f"network: {' '.join(NETWORK)}; seeds {','.join(map(str, seeds))}"
          + (f"; precise BN from {args.precise_bn} batches" if args.precise_bn else ""))
    rows, precise_rows, curves = [], [], []
    with tempfile.TemporaryDirectory() as work:
        for dataset in datasets:
            tic = time.time()
            records = make_digits(work) if dataset == "digits" else make_demo(work)
            train, test = read_split(records, "train"), read_split(records, "test")
            recipe = recipe_of(dataset, train[0], epochs[dataset])
            print(f"{dataset}: {len(train[1])} train / {len(test[1])} test images, "
                  f"{recipe['epochs']} epochs, lr {recipe['lr']} x{recipe['lr_factor']} after "
                  f"epochs {','.join(map(str, recipe['lr_steps']))}, batch "
                  f"{recipe['batch_size']}, {recipe['optimizer']} momentum "
                  f"{recipe['momentum']}, wd {recipe['wd']}", flush=True)
            mxnet_name = "demo" if dataset == "demo" else "cifar10"
            mean = None if dataset == "demo" else recipe["mean"]
            ours, theirs, ours_p, theirs_p = {}, {}, {}, {}
            for seed in seeds:
                curve, precise = train_project(records, mxnet_name, seed, recipe["epochs"],
                                               mean, recipe["std"], args.precise_bn, work)
                twin_curve, twin_precise = train_twin(train, test, recipe, seed,
                                                      args.precise_bn)
                ours[seed], theirs[seed] = curve[-1], twin_curve[-1]
                curves += [("project", curve), ("twin", twin_curve)]
                if args.precise_bn:
                    ours_p[seed], theirs_p[seed] = precise[-1], twin_precise[-1]
                    curves += [("project precise BN", precise),
                               ("twin precise BN", twin_precise)]
                print(f"  seed {seed}: project {curve[-1]:.2f}%, twin {twin_curve[-1]:.2f}%"
                      + (f"; precise BN {ours_p[seed]:.2f}% / {theirs_p[seed]:.2f}%"
                         if args.precise_bn else ""), flush=True)
                if args.curves or args.precise_bn:
                    for who, values in curves[-(4 if args.precise_bn else 2):]:
                        print(f"    {who}: " + " ".join(f"{v:.1f}" for v in values), flush=True)
            rows += summary_rows(dataset, ours, theirs)
            if args.precise_bn:
                precise_rows += summary_rows(dataset, ours_p, theirs_p)
            print(f"  ({time.time() - tic:.0f} s)", flush=True)
    print()
    headers = ["data", "seed", "project top-1 %", "twin top-1 %", "difference"]
    harness.print_table(headers, rows)
    if precise_rows:
        print(f"\nwith BatchNorm statistics recomputed from {args.precise_bn} training batches:")
        harness.print_table(headers, precise_rows)


if __name__ == "__main__":
    main()
