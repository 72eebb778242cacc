"""After training: tools/score.py (equal to the validation line training logged, the authors'
parameter files by name), fine-tuning with --pretrained / --freeze, tools/predict.py."""
import os
import re
import subprocess
import sys

import mxnet as mx
import numpy as np
import pytest

import train_model
from network.released import RELEASED_CHECKPOINTS
from records import make_demo, make_records

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = os.path.join(ROOT, "tools")
sys.path.insert(0, TOOLS)
import score  # noqa: E402

SMALL_NET = ["--network", "plain_igc", "--depth", "8", "--primary-partition", "4",
             "--secondary-partition", "2"]
VAL_LINE = re.compile(r"Epoch\[(\d+)/\d+\] .*val-loss=([\d.]+) val-acc=([\d.]+)%")


def train_args(data_dir, prefix, *extra):
    return ["--dataset", "demo", "--data-dir", str(data_dir), "--gpus", "", "--model-prefix",
            str(prefix), "--rand-seed", "3", "--data-threads", "1", *SMALL_NET, *extra]


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    return make_demo(tmp_path_factory.mktemp("demo"), 5000, 500)


@pytest.fixture(scope="module")
def trained(demo_dir, tmp_path_factory, ops):
    """A 4-epoch demo run (about 50% validation accuracy) with a checkpoint per epoch."""
    prefix = tmp_path_factory.mktemp("run") / "model"
    train_model.main(train_args(demo_dir, prefix, "--num-epochs", "4", "--batch-size", "32",
                                "--lr-steps", "3", "--checkpoint-epochs", "1"))
    return str(prefix)


def run_tool(name, *argv):
    return subprocess.run([sys.executable, os.path.join(TOOLS, name), *argv],
                          capture_output=True, text=True, timeout=300)


# ---------------------------------------------------------------------------------------------
# Score


def test_score_equals_the_validation_line_training_logged(trained, capsys):
    logged = {int(e): (float(loss), float(acc))
              for e, loss, acc in VAL_LINE.findall(open(trained + ".log").read())}
    assert sorted(logged) == [1, 2, 3, 4]
    for epoch in (2, 4):
        # A batch size that does not divide the 500 images: the padding must not count.
        values = score.main(["--model-prefix", trained, "--load-epoch", str(epoch), "--gpus", "",
                             "--batch-size", "64"])
        assert values["images"] == 500
        assert (round(values["loss"], 4), round(values["acc"], 2)) == logged[epoch]
    assert "500 images, top-1" in capsys.readouterr().out


def test_score_top1_top5_and_loss_match_a_numpy_reference(trained, demo_dir, ops):
    # The reference decodes the PNGs itself, normalises with the recipe's numbers in numpy and
    # computes the metrics from the probabilities.
    from training import recipes
    mean = np.array(recipes.CIFAR_DATASETS["demo"]["mean_rgb"])
    std = np.array(recipes.CIFAR_DATASETS["demo"]["std_rgb"])
    reader = mx.recordio.MXIndexedRecordIO(os.path.join(demo_dir, "test.idx"),
                                           os.path.join(demo_dir, "test.rec"), "r")
    images, labels = [], []
    for key in reader.keys:
        header, image = mx.recordio.unpack_img(reader.read_idx(key))
        images.append(((image[:, :, ::-1] - mean) / std).transpose(2, 0, 1))
        labels.append(int(header.label))
    labels = np.array(labels)
    symbol, arg_params, aux_params = mx.model.load_checkpoint(trained, 4)
    exe = symbol.simple_bind(mx.cpu(), grad_req="null", data=(len(images), 3, 32, 32))
    exe.copy_params_from(arg_params, aux_params)
    probs = exe.forward(is_train=False, data=mx.nd.array(np.stack(images)))[0].asnumpy()
    top5 = np.argsort(-probs, axis=1)[:, :5]
    values = score.main(["--model-prefix", trained, "--gpus", ""])  # the latest: epoch 4
    assert values["acc"] == pytest.approx(100 * np.mean(probs.argmax(1) == labels), abs=0.11)
    assert values["top5-acc"] == pytest.approx(100 * np.mean((top5 == labels[:, None]).any(1)),
                                               abs=0.11)
    loss = -np.mean(np.log(np.maximum(probs[np.arange(len(labels)), labels], 1e-12)))
    assert values["loss"] == pytest.approx(loss, rel=1e-3)
    assert values["acc"] > 30  # really trained: chance is 10 %


def released_params(symbol_path, seed=0):
    """A parameter file as the authors' code wrote it (mx.model.save_checkpoint: arg:/aux:
    prefixes) for the released graph at `symbol_path`, with random values in its shapes."""
    symbol = mx.sym.load(symbol_path)
    arg_shapes, _, aux_shapes = symbol.infer_shape(data=(1, 3, 224, 224))
    rng = np.random.RandomState(seed)
    blob = {}
    for name, shape in zip(symbol.list_arguments(), arg_shapes):
        if name not in ("data", "softmax_label"):
            blob[f"arg:{name}"] = mx.nd.array(rng.normal(0, 0.05, shape))
    for name, shape in zip(symbol.list_auxiliary_states(), aux_shapes):
        values = rng.uniform(0.5, 1.5, shape) if name.endswith("_var") else rng.normal(0, .1,
                                                                                      shape)
        blob[f"aux:{name}"] = mx.nd.array(values)
    return symbol, blob


def network_flags(checkpoint):
    flags = ["--network", checkpoint.network]
    for key, value in checkpoint.config.items():
        flags += ["--" + key.replace("_", "-"), str(value)]
    return flags


@pytest.mark.parametrize("checkpoint", RELEASED_CHECKPOINTS, ids=lambda c: c.symbol_file)
def test_an_authors_parameter_file_loads_into_our_builder_by_name(checkpoint, released_symbols_dir,
                                                                 tmp_path, ops):
    from training.model import resolve_model
    _, blob = released_params(os.path.join(released_symbols_dir, checkpoint.symbol_file))
    path = str(tmp_path / "released-0100.params")
    mx.nd.save(path, blob)
    model = resolve_model(score.build_parser().parse_args(
        network_flags(checkpoint) + ["--params", path, "--gpus", "", "--data-dir",
                                     str(tmp_path)]))
    loaded = {f"arg:{k}": v for k, v in model.arg_params.items()}
    loaded.update({f"aux:{k}": v for k, v in model.aux_params.items()})
    assert sorted(loaded) == sorted(blob)
    assert model.num_classes == 1000


def test_mean_and_std_flags_replace_the_recipes_for_an_authors_file(released_symbols_dir,
                                                                    tmp_path, ops):
    """The released IGCV1 weights were trained on mean-subtracted pixels (docs/reproduce.md):
    --std-rgb 1,1,1 scores them that way."""
    from training.model import resolve_model
    from training.recipes import IGCV1_MEAN_RGB, IGCV1_STD_RGB
    checkpoint = next(c for c in RELEASED_CHECKPOINTS if c.config.get("variant") == "igc_l100m2")
    _, blob = released_params(os.path.join(released_symbols_dir, checkpoint.symbol_file), seed=2)
    path = str(tmp_path / "released-0100.params")
    mx.nd.save(path, blob)
    imagenet_records(tmp_path, 4)
    flags = network_flags(checkpoint) + ["--params", path, "--gpus", "", "--data-dir",
                                         str(tmp_path), "--batch-size", "4"]
    model = resolve_model(score.build_parser().parse_args(flags + ["--std-rgb", "1,1,1"]))
    assert model.preprocessing.std_rgb == (1.0, 1.0, 1.0)
    assert model.preprocessing.mean_rgb == IGCV1_MEAN_RGB
    default = resolve_model(score.build_parser().parse_args(flags))
    assert default.preprocessing.std_rgb == IGCV1_STD_RGB


def test_mean_and_std_flags_reach_the_reader(trained):
    """A checkpoint scored with other numbers than it was trained with scores otherwise."""
    base = ["--model-prefix", trained, "--gpus", ""]
    saved = score.main(base)
    assert score.main(base + ["--std-rgb", "1,1,1"])["loss"] != saved["loss"]
    assert score.main(base + ["--mean-rgb", "0,0,0"])["loss"] != saved["loss"]


def imagenet_records(directory, count, num_classes=1000):
    rng = np.random.RandomState(1)
    labels = [int(v) for v in rng.randint(0, num_classes, count)]
    make_records(directory, "val", labels, size=(60, 80))
    return labels


def test_score_of_an_authors_file_equals_the_released_graph_with_the_same_weights(
        released_symbols_dir, tmp_path, ops):
    checkpoint = next(c for c in RELEASED_CHECKPOINTS if c.config.get("variant") == "igc_l100m2")
    symbol_path = os.path.join(released_symbols_dir, checkpoint.symbol_file)
    released, blob = released_params(symbol_path, seed=2)
    path = str(tmp_path / "released-0100.params")
    mx.nd.save(path, blob)
    imagenet_records(tmp_path, 6)
    ours = score.main(network_flags(checkpoint) + [
        "--params", path, "--gpus", "", "--data-dir", str(tmp_path), "--batch-size", "4"])
    # The same weights in the authors' own graph (read by --symbol) score the same.
    theirs = score.main(["--symbol", symbol_path, "--params", path, "--gpus", "",
                         "--data-dir", str(tmp_path), "--batch-size", "4"])
    assert ours["images"] == theirs["images"] == 6
    for key in ("loss", "acc", "top5-acc"):
        assert ours[key] == pytest.approx(theirs[key], rel=1e-4, abs=1e-6), key


def test_a_parameter_file_with_missing_and_unexpected_names_is_one_line(
        released_symbols_dir, tmp_path, ops):
    checkpoint = next(c for c in RELEASED_CHECKPOINTS if c.network == "igcv3")
    _, blob = released_params(os.path.join(released_symbols_dir, checkpoint.symbol_file))
    del blob["arg:fc_weight"]
    blob["arg:head_weight"] = mx.nd.zeros((3,))
    path = str(tmp_path / "renamed.params")
    mx.nd.save(path, blob)
    imagenet_records(tmp_path, 2)
    result = run_tool("score.py", *network_flags(checkpoint), "--params", path, "--gpus", "",
                      "--data-dir", str(tmp_path))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert path in lines[0]
    assert "1 missing (fc_weight)" in lines[0] and "1 unexpected (head_weight)" in lines[0]


BAD_SCORE_INPUTS = [
    ("no_weights", lambda run: ["--network", "plain_igc"], "give the weights"),
    ("missing_epoch", lambda run: ["--model-prefix", run, "--load-epoch", "9"],
     "0009.params not found"),
    ("not_a_params_file", lambda run: ["--params", run + ".log", "--network", "plain_igc"],
     "not a readable MXNet parameter file"),
    ("other_network", lambda run: ["--params", run + "-0004.params", "--network", "resnet"],
     "does not fit the network"),
    ("wrong_dataset_kind", lambda run: ["--model-prefix", run, "--dataset", "imagenet"],
     "is a cifar network"),
]


@pytest.mark.parametrize("kind,argv,message", BAD_SCORE_INPUTS,
                         ids=[c[0] for c in BAD_SCORE_INPUTS])
def test_bad_score_inputs_are_one_line_naming_the_problem(kind, argv, message, trained):
    result = run_tool("score.py", *argv(trained), "--gpus", "")
    assert result.returncode == 2, result.stderr
    assert message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


# ---------------------------------------------------------------------------------------------
# Fine-tune

SUBSET_CLASSES = (0, 2, 4, 6, 8)  # the solid shapes of the demo set, relabelled 0..4


@pytest.fixture(scope="module")
def subset_dir(tmp_path_factory):
    """New images (another seed than the demo set) of 5 demo classes: 100 per class to train
    on, 100 per class to validate."""
    from tools import demo_images
    directory = tmp_path_factory.mktemp("subset")
    rng = np.random.default_rng(99)
    for split in ("train", "test"):
        labels = [i % 5 for i in range(500)]
        images = [demo_images.render(SUBSET_CLASSES[label], rng) for label in labels]
        make_records(directory, split, labels, pixels=lambda i: images[i])
    return str(directory)


def subset_args(subset_dir, prefix, *extra):
    return train_args(subset_dir, prefix, "--num-classes", "5", "--num-epochs", "2",
                      "--batch-size", "16", "--lr", "0.03", "--rand-seed", "1", *extra)


def test_fine_tuning_a_demo_checkpoint_beats_training_from_scratch(trained, subset_dir,
                                                                  tmp_path):
    # Seeds 1-4 measured: fine-tuned 33.6-35.6 % (loss 1.33-1.36), from scratch 20.0-23.8 %
    # (loss 1.61-1.66); chance is 20 % (loss ln 5 = 1.61).
    pretrained = trained + "-0004.params"
    tuned = train_model.main(subset_args(subset_dir, tmp_path / "tuned" / "m",
                                         "--pretrained", pretrained))[-1]
    scratch = train_model.main(subset_args(subset_dir, tmp_path / "scratch" / "m"))[-1]
    assert tuned["val-acc"] >= 30 and tuned["val-loss"] < 1.5, tuned
    assert scratch["val-acc"] < 30 and scratch["val-loss"] > 1.5, scratch
    log = open(tmp_path / "tuned" / "m.log").read()
    # The 10-class classifier does not fit 5 classes: it is initialised, everything else loaded.
    file_names = {k[4:] for k in mx.nd.load(pretrained)}
    loaded = re.search(r"--pretrained \S+: loaded (\d+) arrays: (.*)", log)
    assert set(loaded.group(2).split()) == file_names - {"fc_score_weight", "fc_score_bias"}
    assert "initialised 2 arrays: fc_score_weight (file (10, 32), network (5, 32)) " \
           "fc_score_bias (file (10,), network (5,))" in log
    assert "), 0 in the file unused" in log


def test_freeze_keeps_the_matching_weights_equal_to_the_pretrained_file(trained, subset_dir,
                                                                        tmp_path):
    prefix = tmp_path / "frozen" / "m"
    train_model.main(subset_args(subset_dir, prefix, "--pretrained", trained + "-0004.params",
                                 "--freeze", "^(?!fc)", "--num-epochs", "1"))
    before = {k: v.asnumpy() for k, v in mx.nd.load(trained + "-0004.params").items()}
    after = {k: v.asnumpy() for k, v in mx.nd.load(f"{prefix}-0001.params").items()}
    frozen = [k for k in after if k.startswith("arg:") and not k.startswith("arg:fc")]
    assert len(frozen) == 27
    for key in frozen:
        np.testing.assert_array_equal(after[key], before[key], err_msg=key)
    # The classifier trained. MXNet updates BN running statistics in the backward pass, which
    # does not reach a frozen backbone: they stay as loaded too (as the --freeze help says).
    assert np.abs(after["arg:fc_score_bias"]).max() > 0
    for key in (k for k in after if k.startswith("aux:")):
        np.testing.assert_array_equal(after[key], before[key], err_msg=key)
    assert "--freeze: 27 arguments kept fixed" in open(f"{prefix}.log").read()


BAD_FINE_TUNING = [
    ("missing_file", ["--pretrained", "nowhere.params"], "--pretrained nowhere.params: file not"),
    ("not_params", ["--pretrained", "LOG"], "not a readable MXNet parameter file"),
    ("bad_regex", ["--freeze", "fc(["], "--freeze 'fc([': not a regular expression"),
    ("matches_nothing", ["--freeze", "^nothing"], "matches no argument of network plain_igc"),
    ("matches_everything", ["--freeze", "."], "nothing would train"),
    ("with_load_epoch", ["--pretrained", "PARAMS", "--load-epoch", "1"], "give one of them"),
]


@pytest.mark.parametrize("entry_point", ["train_model", "train_imagenet"])
def test_both_entry_points_take_pretrained_and_freeze(entry_point):
    parser = __import__(entry_point).build_parser()
    args = parser.parse_args(["--pretrained", "x.params", "--freeze", "^g0_"])
    assert (args.pretrained, args.freeze) == ("x.params", "^g0_")


@pytest.mark.parametrize("kind,extra,message", BAD_FINE_TUNING,
                         ids=[c[0] for c in BAD_FINE_TUNING])
def test_bad_fine_tuning_flags_fail_before_training(kind, extra, message, trained, subset_dir,
                                                    tmp_path, capsys):
    extra = [{"LOG": trained + ".log", "PARAMS": trained + "-0004.params"}.get(a, a)
             for a in extra]
    prefix = tmp_path / "m"
    with pytest.raises(SystemExit) as exit_info:
        train_model.main(subset_args(subset_dir, prefix, *extra))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err
    assert not os.path.exists(f"{prefix}-0001.params")


# ---------------------------------------------------------------------------------------------
# Predict


@pytest.mark.parametrize("size,resize,crop", [((50, 70), 40, 32), ((90, 60), 36, 32),
                                              ((32, 32), None, 32)])
def test_predict_preprocessing_equals_the_validation_record_reader(size, resize, crop, tmp_path):
    import cv2

    import training
    from training import prediction, recipes
    rng = np.random.RandomState(4)
    image = rng.randint(0, 256, size + (3,)).astype(np.uint8)
    make_records(tmp_path, "one", [0], pixels=lambda i: image)
    path = str(tmp_path / "one.png")
    cv2.imwrite(path, image[:, :, ::-1])
    mean, std = (120.0, 110.0, 100.0), (60.0, 50.0, 40.0)
    augment = {"resize": resize} if resize else {}
    record = training.RecordFile(str(tmp_path / "one.rec"), str(tmp_path / "one.idx"), 1, 1)
    expected = next(iter(training.record_iter(record, 1, (3, crop, crop), mean, std, augment)))
    pre = recipes.Preprocessing(mean, std, (3, crop, crop), augment)
    got = prediction.preprocess(prediction.read_image(path), pre)
    np.testing.assert_allclose(got, expected.data[0].asnumpy()[0], atol=1e-5)


def png_files_of(records, directory, count):
    """The first `count` images of a record set as PNG files, with their labels."""
    import cv2
    reader = mx.recordio.MXIndexedRecordIO(records + ".idx", records + ".rec", "r")
    paths, labels = [], []
    for key in reader.keys[:count]:
        header, bgr = mx.recordio.unpack_img(reader.read_idx(key))
        paths.append(os.path.join(directory, f"{key}.png"))
        cv2.imwrite(paths[-1], bgr)
        labels.append(int(header.label))
    return paths, labels


def test_predict_names_the_top5_classes_and_reports_bad_files_in_one_line(trained, demo_dir,
                                                                       tmp_path):
    paths, _ = png_files_of(os.path.join(demo_dir, "test"), str(tmp_path), 6)
    # A larger JPEG copy: any size is accepted (the demo recipe resizes it to 32x32).
    import cv2
    big = str(tmp_path / "big.jpg")
    cv2.imwrite(big, cv2.resize(cv2.imread(paths[0]), (96, 96)))
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    result = run_tool("predict.py", "--model-prefix", trained, "--load-epoch", "4",
                      *paths, str(broken), big, str(tmp_path / "missing.jpg"))
    assert result.returncode == 1
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 2, result.stderr
    assert f"{broken}: not an image" in errors[0] and "missing.jpg: no such file" in errors[1]
    lines = dict(line.split(": ", 1) for line in result.stdout.strip().splitlines())
    assert sorted(lines) == sorted(paths + [big])

    # Reference: the checkpoint's probabilities for the same PNGs, normalised in numpy.
    from training import recipes
    names = open(os.path.join(demo_dir, "synsets.txt")).read().split()
    mean = np.array(recipes.CIFAR_DATASETS["demo"]["mean_rgb"])
    std = np.array(recipes.CIFAR_DATASETS["demo"]["std_rgb"])
    batch = np.stack([((cv2.imread(p)[:, :, ::-1] - mean) / std).transpose(2, 0, 1)
                      for p in paths])
    symbol, arg_params, aux_params = mx.model.load_checkpoint(trained, 4)
    exe = symbol.simple_bind(mx.cpu(), grad_req="null", data=batch.shape)
    exe.copy_params_from(arg_params, aux_params)
    probs = exe.forward(is_train=False, data=mx.nd.array(batch))[0].asnumpy()
    for path, row in zip(paths, probs):
        shown = [item.rsplit(" ", 1) for item in lines[path].split(", ")]
        assert [n for n, _ in shown] == [names[c] for c in np.argsort(-row)[:5]], lines[path]
        np.testing.assert_allclose([float(p[:-1]) for _, p in shown], 100 * np.sort(row)[::-1][:5],
                                   atol=0.051)


def test_predict_takes_cifar_class_names_from_the_archive(trained, tmp_path):
    from upstream import cifar10_members, write_cifar_archive
    members = cifar10_members(np.random.default_rng(0))
    members["batches.meta"][b"label_names"] = [f"kind{i}".encode() for i in range(10)]
    archive = write_cifar_archive(tmp_path / "cifar-10-python.tar.gz", "cifar-10-batches-py",
                                  members)
    out = tmp_path / "cifar10"
    subprocess.run([os.path.join(TOOLS, "make_rec.sh"), "cifar10", "--from", archive, "--out",
                    str(out), "--no-verify"], check=True, capture_output=True, timeout=120)
    paths, _ = png_files_of(str(out / "test"), str(tmp_path), 2)
    result = run_tool("predict.py", "--params", trained + "-0004.params", *SMALL_NET,
                      "--dataset", "cifar10", "--data-dir", str(out), *paths)
    assert result.returncode == 0, result.stderr
    for line in result.stdout.strip().splitlines():
        assert re.fullmatch(r"\S+: (kind\d [\d.]+%, ){4}kind\d [\d.]+%", line), line
