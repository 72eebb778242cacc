"""Your own images, end to end: a class-per-folder tree of JPEGs of any size -> make_rec folder
-> fine-tune a zoo network pretrained on another set (its classifier re-initialised) -> score ->
predict -> ONNX export -> ONNX Runtime, preprocessing from the file's metadata alone, gives
predict's probabilities for the same image file. Plus the builder's split, statistics and
one-line errors."""
import json
import os
import re
import subprocess
import sys

import cv2
import mxnet as mx
import numpy as np
import pytest

import train_model
from records import SMALL_NET

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = os.path.join(ROOT, "tools")
CLASSES = ("blue", "red")
COLOURS = {"red": (200, 60, 50), "blue": (50, 60, 200)}


def run(*argv, module=None):
    command = [sys.executable, "-m", module] if module else [sys.executable]
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run(command + [str(a) for a in argv], capture_output=True, text=True,
                          timeout=300, env=env)


def make_rec(*argv):
    return run(*argv, module="tools.make_rec")


def write_tree(root, per_class=12, seed=0):
    """root/red/*.jpg, root/blue/*.jpg: noisy images of a dominant colour, of varied sizes."""
    rng = np.random.RandomState(seed)
    for name in CLASSES:
        os.makedirs(root / name)
        for i in range(per_class):
            rows, cols = rng.randint(18, 60, 2)
            image = np.clip(np.array(COLOURS[name]) + rng.normal(0, 40, (rows, cols, 3)), 0, 255)
            cv2.imwrite(str(root / name / f"{i:02d}.jpg"), image.astype(np.uint8)[:, :, ::-1])


def stored_images(prefix):
    """(labels, RGB images) of a record set, read back with MXNet's own record reader."""
    reader = mx.recordio.MXIndexedRecordIO(f"{prefix}.idx", f"{prefix}.rec", "r")
    labels, images = [], []
    for key in reader.keys:
        header, image = mx.recordio.unpack_img(reader.read_idx(key))
        labels.append(int(header.label))
        images.append(image[:, :, ::-1])
    reader.close()
    return np.array(labels), np.stack(images)


def test_make_rec_folder_holds_out_each_class_and_records_classes_size_and_statistics(tmp_path):
    write_tree(tmp_path / "images")
    out = tmp_path / "records"
    result = make_rec("folder", "--from", tmp_path / "images", "--out", out, "--resize", "16")
    assert result.returncode == 0, result.stderr
    # A small set gets one progress line per split, not one per 10 %.
    assert [line.split(":")[0].strip() for line in result.stdout.splitlines()
            if "%)" in line] == ["train", "test"], result.stdout
    info = json.loads((out / "make_rec.json").read_text())
    assert info["class_names"] == list(CLASSES) == (out / "synsets.txt").read_text().split()
    assert info["data_shape"] == [3, 16, 16]
    # round(0.2 * 12) = 2 of each class held out
    assert info["counts"] == {"train": 20, "test": 4}
    labels, images = stored_images(out / "train")
    assert images.shape == (20, 16, 16, 3) and np.bincount(labels).tolist() == [10, 10]
    pixels = images.reshape(-1, 3).astype(np.float64)
    np.testing.assert_allclose(info["mean_rgb"], pixels.mean(0), atol=1e-3)
    np.testing.assert_allclose(info["std_rgb"], pixels.std(0), atol=1e-3)
    # every stored image has its class's dominant colour
    dominant = images.reshape(20, -1, 3).mean(1)
    assert ((dominant[:, 0] > dominant[:, 2]) == (labels == CLASSES.index("red"))).all()
    test_labels, _ = stored_images(out / "test")
    assert np.bincount(test_labels).tolist() == [2, 2]
    # The same tree is kept; an added image makes it another set (rebuilt with --force).
    again = make_rec("folder", "--from", tmp_path / "images", "--out", out, "--resize", "16")
    assert again.returncode == 0 and "already there" in again.stdout
    cv2.imwrite(str(tmp_path / "images" / "red" / "new.png"), np.zeros((20, 20, 3), np.uint8))
    again = make_rec("folder", "--from", tmp_path / "images", "--out", out, "--resize", "16")
    assert again.returncode == 1 and "pass --force" in again.stderr
    train_names = {line.split("\t")[2] for line in (out / "train.lst").read_text().splitlines()}
    test_names = {line.split("\t")[2] for line in (out / "test.lst").read_text().splitlines()}
    assert not train_names & test_names and len(train_names | test_names) == 24


def test_make_rec_folder_uses_given_train_and_val_folders(tmp_path):
    write_tree(tmp_path / "images" / "train", per_class=5)
    write_tree(tmp_path / "images" / "val", per_class=3, seed=1)
    out = tmp_path / "records"
    result = make_rec("folder", "--from", tmp_path / "images", "--out", out, "--resize", "8")
    assert result.returncode == 0, result.stderr
    info = json.loads((out / "make_rec.json").read_text())
    assert info["counts"] == {"train": 10, "test": 6}
    assert info["class_names"] == list(CLASSES)


@pytest.mark.parametrize("layout,message", [
    ({"only": 3}, "only one class folder"),
    ({"a": 3, "b": 0}, "b: no images"),
    ({}, "expected one sub-folder per class"),
])
def test_make_rec_folder_refuses_unusable_trees_in_one_line(layout, message, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for name, count in layout.items():
        (images / name).mkdir()
        for i in range(count):
            cv2.imwrite(str(images / name / f"{i}.png"), np.zeros((9, 9, 3), np.uint8))
    result = make_rec("folder", "--from", images, "--out", tmp_path / "out")
    assert result.returncode == 1
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out" / "make_rec.json").exists()


def test_train_model_folder_needs_records_made_by_make_rec_folder(tmp_path, capsys):
    for argv, message in (([], "needs --data-dir"),
                          (["--data-dir", str(tmp_path)], "make_rec.json not found")):
        with pytest.raises(SystemExit) as exit_info:
            train_model.main(["--dataset", "folder", "--gpus", "", *argv])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1


def readme_snippet():
    """The README's ONNX Runtime example (section "Your own images")."""
    text = open(os.path.join(ROOT, "README.md")).read()
    section = text[text.index("## Your own images"):]
    return section[section.index("```python") + len("```python"):].split("```")[0]


def metadata_inference(onnx_path, image_path):
    """Class probabilities of an image file in ONNX Runtime, prepared from the ONNX file's
    metadata alone: the README's snippet, run on these files."""
    code = readme_snippet().replace('"runs/pets/model.onnx"', repr(onnx_path)) \
        .replace('"cat.jpg"', repr(image_path)).replace("print(", "(")
    namespace = {}
    exec(code, namespace)
    meta = namespace["meta"]
    assert (meta["input_layout"], meta["channel_order"], meta["pixel_range"]) == \
        ("NCHW", "RGB", "0-255")
    return json.loads(meta["class_names"]), namespace["probs"]


def test_own_images_fine_tune_score_predict_and_onnx_agree(tmp_path, ops, capsys):
    # A "zoo" network trained on the 10-class demo set at 32x32 ...
    demo = tmp_path / "demo"
    assert make_rec("demo", "--out", demo, "--num-train", "200", "--num-test", "40") \
        .returncode == 0
    base = tmp_path / "base" / "model"
    train_model.main(["--dataset", "demo", "--data-dir", str(demo), "--gpus", "",
                      "--model-prefix", str(base), "--rand-seed", "1", "--data-threads", "1",
                      "--num-epochs", "1", *SMALL_NET])
    # ... fine-tuned on two classes of JPEGs of any size, stored at 16x16.
    write_tree(tmp_path / "images", per_class=16)
    data = tmp_path / "records"
    assert make_rec("folder", "--from", tmp_path / "images", "--out", data, "--resize", "16") \
        .returncode == 0
    prefix = tmp_path / "tuned" / "model"
    train_model.main(["--dataset", "folder", "--data-dir", str(data), "--gpus", "",
                      "--model-prefix", str(prefix), "--rand-seed", "1", "--data-threads", "1",
                      "--num-epochs", "4", "--batch-size", "8", "--precise-bn", "4", "--pretrained",
                      f"{base}-0001.params", *SMALL_NET])
    log = open(f"{prefix}.log").read()
    # The console gets counts and the classifier's fresh arrays; the names go to the log file.
    out = capsys.readouterr().out
    assert "finished 1 epoch in" in out and "finished 4 epochs in" in out
    assert re.search(r"loaded 41 arrays, initialised 2 \(fc_score_weight .*\), 0 in the file "
                     "unused", out), out
    assert "g1_b1_conv1_weight" not in out and "g1_b1_conv1_weight" in log
    assert "configuration: {" not in out
    # The resolved config: the keys left at their defaults too.
    assert re.search(r"\d\d:\d\d:\d\d   network: name=\"plain_igc\" config=\{\"depth\": 8, .*"
                     r"\"permutation\": \"reorder\", \"conv_impl\": \"auto\"\}", out)
    assert re.search(r"initialised 2 arrays: fc\w*_weight \(file \(10, \d+\), network "
                     r"\(2, \d+\)\) fc\w*_bias", log), log
    last_val = re.findall(r"val-loss=([\d.]+) val-acc=([\d.]+)%", log)[-1]
    assert float(last_val[1]) == 100.0

    # A checkpoint of another network fits only a few arrays: said in a warning.
    train_model.main(["--dataset", "folder", "--data-dir", str(data), "--gpus", "",
                      "--model-prefix", str(tmp_path / "other" / "model"), "--num-epochs", "1",
                      "--network", "resnet_igc", "--depth", "8", "--primary-partition", "4",
                      "--secondary-partition", "2", "--pretrained", f"{base}-0001.params"])
    assert re.search(r"WARNING only \d of the \d+ arrays of network resnet_igc come from it",
                     capsys.readouterr().out)

    # Every tool from --model-prefix alone.
    result = run(os.path.join(TOOLS, "score.py"), "--model-prefix", prefix, "--gpus", "")
    assert result.returncode == 0, result.stderr
    assert f"top-1 100.00% loss {last_val[0]}" in result.stdout
    result = run(os.path.join(TOOLS, "score.py"), "--model-prefix", prefix, "--gpus", "",
                 "--per-class", "--confusion")
    assert result.returncode == 0, result.stderr
    held_labels = [int(float(line.split("\t")[1]))
                   for line in (data / "test.lst").read_text().splitlines()]
    per_class = np.bincount(held_labels, minlength=2)
    lines = result.stdout.splitlines()
    for k, name in enumerate(CLASSES):
        assert f"{name} {per_class[k]} {per_class[k]} 100.00%" in \
            [" ".join(line.split()) for line in lines]
        matrix_row = [int(v) for v in next(line for line in lines[lines.index(
            next(x for x in lines if x.startswith("true/predicted"))):]
            if line.startswith(name)).split()[1:]]
        assert matrix_row == [per_class[k] if j == k else 0 for j in range(2)]
    held_out = [line.split("\t")[2] for line in (data / "test.lst").read_text().splitlines()]
    images = [str(tmp_path / "images" / name) for name in held_out]
    result = run(os.path.join(TOOLS, "predict.py"), "--model-prefix", prefix, *images)
    assert result.returncode == 0, result.stderr
    predicted = {}
    for line in result.stdout.splitlines():
        path, top = line.rsplit(": ", 1)
        predicted[path] = [(name, float(p[:-1]) / 100) for name, p in
                           (entry.split() for entry in top.split(", "))]
    assert [predicted[p][0][0] for p in images] == [os.path.basename(os.path.dirname(p))
                                                    for p in images]
    onnx_path = str(tmp_path / "tuned.onnx")
    result = run(os.path.join(TOOLS, "export_onnx.py"), "--model-prefix", prefix, "-o",
                 onnx_path)
    assert result.returncode == 0, result.stderr
    assert "input data (N, 3, H, W)" in result.stdout
    for path in images:
        names, probs = metadata_inference(onnx_path, path)
        assert names[int(probs.argmax())] == predicted[path][0][0]
        for name, p in predicted[path]:
            assert abs(probs[names.index(name)] - p) <= 0.0006  # predict prints 0.1 %
