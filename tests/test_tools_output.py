"""What users of image-classification tools expect: tools/predict.py takes folders and glob
patterns and writes JSON or CSV with the text output's numbers; tools/score.py's confusion
matrix and per-class accuracy count what a loop over the labels counts."""
import csv
import io
import json
import os
import sys

import cv2
import mxnet as mx
import numpy as np
import pytest

import network
from training.metrics import Stats, per_class_table

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import predict  # noqa: E402

NET = dict(depth=8, primary_partition=4, secondary_partition=2)
FLAGS = ["--network", "plain_igc", "--depth", "8", "--primary-partition", "4",
         "--secondary-partition", "2", "--dataset", "demo"]
CLASS_NAMES = [f"class-{k}" for k in range(10)]


def test_confusion_matrix_and_per_class_accuracy_count_each_label_and_argmax():
    rng = np.random.RandomState(0)
    stats = Stats(num_classes=4)
    labels_all, probs_all = [], []
    for size in (7, 13, 1):
        probs = rng.dirichlet(np.ones(4), size)
        labels = rng.randint(0, 4, size).astype(np.float32)
        stats.update(probs, labels)
        labels_all += list(labels.astype(int))
        probs_all += list(probs)
    expected = np.zeros((4, 4), int)
    for label, p in zip(labels_all, probs_all):
        expected[label, int(np.argmax(p))] += 1
    np.testing.assert_array_equal(stats.confusion, expected)
    assert stats.values()["acc"] == pytest.approx(100 * np.trace(expected) / len(labels_all))
    rows = per_class_table(stats.confusion, ["a", "b", "c", "d"])[1:]
    for name, row in zip("abcd", rows):
        k = "abcd".index(name)
        fields = row.split()
        assert fields[:3] == [name, str(expected[k].sum()), str(expected[k, k])]


@pytest.fixture(scope="module")
def weights(tmp_path_factory, ops):
    """A randomly initialised plain_igc saved as a parameter file."""
    symbol = network.get_symbol("plain_igc", 10, **NET)
    module = mx.mod.Module(symbol, data_names=("data",), label_names=("softmax_label",))
    module.bind(data_shapes=[("data", (1, 3, 32, 32))], label_shapes=[("softmax_label", (1,))],
                for_training=False)
    mx.random.seed(0)
    module.init_params(mx.init.Xavier(magnitude=2))
    path = str(tmp_path_factory.mktemp("weights") / "random.params")
    module.save_params(path)
    return path


@pytest.fixture
def images(tmp_path):
    rng = np.random.RandomState(1)
    paths = []
    for name in ("a/1.png", "a/2.jpg", "a/deeper/3.png", "b/4.png"):
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), rng.randint(0, 256, (40, 36, 3)).astype(np.uint8))
        paths.append(str(path))
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    return tmp_path, paths


def run_predict(capsys, weights, *argv):
    data = os.path.join(os.path.dirname(weights), "data")
    os.makedirs(data, exist_ok=True)
    with open(os.path.join(data, "synsets.txt"), "w") as f:
        f.writelines(name + "\n" for name in CLASS_NAMES)
    try:
        predict.main(["--params", weights, *FLAGS, "--data-dir", data, "--top", "3", *argv])
        code = 0
    except SystemExit as exit_info:
        code = exit_info.code
    out, err = capsys.readouterr()
    return code, out, err


def text_lines(out):
    return {path: [(name, float(p[:-1])) for name, p in (e.split() for e in top.split(", "))]
            for path, top in (line.rsplit(": ", 1) for line in out.splitlines())}


def test_predict_takes_folders_and_glob_patterns(weights, images, capsys):
    root, paths = images
    code, by_name, _ = run_predict(capsys, weights, *paths)
    assert code == 0
    code, by_folder, err = run_predict(capsys, weights, str(root / "a"), str(root / "b" / "*.png"))
    assert code == 0, err
    assert list(text_lines(by_folder)) == paths  # sorted, sub-folders included, .txt skipped
    assert text_lines(by_folder) == text_lines(by_name)
    (root / "empty").mkdir()
    code, _, err = run_predict(capsys, weights, str(root / "nothing" / "*.png"),
                               str(root / "empty"))
    assert code == 1
    assert [line.split(": error: ", 1)[1] for line in err.splitlines()] == [
        f"{root}/nothing/*.png: no file matches this pattern",
        f"{root}/empty: a folder without images (.jpg, .jpeg, .png, .bmp, .tif, .tiff, .webp, "
        ".ppm, .pgm)"]


def test_predict_json_and_csv_hold_the_text_outputs_classes_and_probabilities(weights, images,
                                                                             capsys):
    _, paths = images
    _, text, _ = run_predict(capsys, weights, *paths)
    _, as_json, _ = run_predict(capsys, weights, "--format", "json", *paths)
    _, as_csv, _ = run_predict(capsys, weights, "--format", "csv", *paths)
    expected = text_lines(text)
    listed = json.loads(as_json)
    assert [entry["path"] for entry in listed] == paths
    for entry in listed:
        assert [(t["class"], round(100 * t["probability"], 1)) for t in entry["top"]] == \
            expected[entry["path"]]
        assert all(t["class"] == CLASS_NAMES[t["label"]] for t in entry["top"])
    rows = list(csv.DictReader(io.StringIO(as_csv)))
    assert len(rows) == 3 * len(paths)
    for row in rows:
        top = next(e for e in listed if e["path"] == row["path"])["top"][int(row["rank"]) - 1]
        assert (int(row["label"]), row["class"]) == (top["label"], top["class"])
        assert float(row["probability"]) == pytest.approx(top["probability"], abs=1e-6)
