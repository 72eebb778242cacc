"""tools/make_rec.sh and tools/make_rec.py: the demo set, SVHN, ImageNet and the command line;
tiny inputs in the exact upstream formats go in, the records are read back with MXNet's own
readers and compared with the source pixels and labels."""
import os
import shutil
import subprocess

import cv2
import numpy as np

from tools import demo_images, make_rec
from upstream import (
    ROOT,
    build,
    indexed_split,
    iter_split,
    list_names,
    output_files,
    run_script,
    write_svhn_mat,
)

# ---------------------------------------------------------------------------------------------
# Demo


def test_demo_script_writes_default_sizes_balanced_and_readable_by_image_record_iter(tmp_path):
    out = tmp_path / "demo"
    result = run_script("demo", "--out", out)
    assert result.returncode == 0, result.stderr
    assert sorted(os.listdir(out)) == [
        "make_rec.json",
        "synsets.txt",
        "test.idx",
        "test.lst",
        "test.rec",
        "train.idx",
        "train.lst",
        "train.rec",
    ]
    for split, count in (("train", 5000), ("test", 1000)):
        records = indexed_split(out / split)
        assert len(records) == count
        labels = np.array([header.label for header, _ in records])
        np.testing.assert_array_equal(
            np.bincount(labels.astype(int), minlength=10), [count // 10] * 10
        )
        assert all(image.shape == (32, 32, 3) for _, image in records[:50])
    data, labels = iter_split(out / "test", 1000)
    assert data.shape == (1000, 32, 32, 3)
    np.testing.assert_array_equal(
        labels, [header.label for header, _ in indexed_split(out / "test")]
    )
    assert (out / "synsets.txt").read_text().split() == list(demo_images.CLASS_NAMES)


def test_demo_records_hold_the_generated_pixels_exactly_and_depend_only_on_the_seed(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    make_rec.make_demo(str(a), seed=3, num_train=60, num_test=20)
    make_rec.make_demo(str(b), seed=3, num_train=60, num_test=20)
    make_rec.make_demo(str(c), seed=4, num_train=60, num_test=20)
    assert (a / "train.rec").read_bytes() == (b / "train.rec").read_bytes()
    assert (a / "train.rec").read_bytes() != (c / "train.rec").read_bytes()
    assert (a / "train.rec").read_bytes() != (a / "test.rec").read_bytes()
    # The generator is documented as deterministic in (seed, stream): train is stream 0.
    images, labels = demo_images.generate(60, [3, 0])
    data, record_labels = iter_split(a / "train", 60)
    np.testing.assert_array_equal(data, images.astype(np.float32))
    np.testing.assert_array_equal(record_labels, labels)


def test_demo_class_is_not_given_away_by_mean_colour(tmp_path):
    # Colours are drawn independently of the class, so a classifier must look at shape and
    # texture: nearest-class-mean on the image's mean RGB stays near chance (10%).
    train, train_labels = demo_images.generate(1000, [0, 0])
    test, test_labels = demo_images.generate(500, [0, 1])
    train_rgb, test_rgb = train.mean(axis=(1, 2)), test.mean(axis=(1, 2))
    centroids = np.stack([train_rgb[train_labels == k].mean(axis=0) for k in range(10)])
    predicted = np.argmin(((test_rgb[:, None] - centroids[None]) ** 2).sum(-1), axis=1)
    assert (predicted == test_labels).mean() < 0.2


# ---------------------------------------------------------------------------------------------
# SVHN


def test_svhn_script_train_is_train_plus_extra_and_label_10_becomes_digit_0(tmp_path):
    rng = np.random.default_rng(9)
    src = tmp_path / "src"
    src.mkdir()
    sources = {
        stem: write_svhn_mat(src / f"{stem}.mat", rng, n)
        for stem, n in (("train_32x32", 7), ("extra_32x32", 5), ("test_32x32", 4))
    }
    out = tmp_path / "out"
    result = run_script("svhn", "--from", src, "--out", out, "--no-verify")
    assert result.returncode == 0, result.stderr

    for split, count in (("train", 12), ("test", 4)):
        data, labels = iter_split(out / split, count)
        rows = list_names(out / split)
        assert len(rows) == count
        seen = set()
        for record, (_, _, name) in enumerate(rows):
            stem, index = name.split("/")[0], int(name.split("/")[1].split(".")[0])
            seen.add((stem, index))
            x, y = sources[stem]
            np.testing.assert_array_equal(data[record], x[:, :, :, index].astype(np.float32))
            assert labels[record] == (0 if y[index] == 10 else y[index])
        expected = (
            {("test_32x32", i) for i in range(4)}
            if split == "test"
            else {("train_32x32", i) for i in range(7)} | {("extra_32x32", i) for i in range(5)}
        )
        assert seen == expected


def test_svhn_no_extra_trains_on_train_alone_and_truncated_mat_is_rejected(tmp_path, capsys):
    rng = np.random.default_rng(10)
    src = tmp_path / "src"
    src.mkdir()
    write_svhn_mat(src / "train_32x32.mat", rng, 6)
    write_svhn_mat(src / "test_32x32.mat", rng, 3)
    out = tmp_path / "out"
    code, err = build(
        ["svhn", "--from", str(src), "--out", str(out), "--no-verify", "--no-extra"], capsys
    )
    assert code == 0, err
    assert len(indexed_split(out / "train")) == 6 and len(indexed_split(out / "test")) == 3

    code, err = build(
        ["svhn", "--from", str(src), "--out", str(tmp_path / "o2"), "--no-verify"], capsys
    )
    assert code == 1 and "extra_32x32.mat does not exist" in err

    data = (src / "test_32x32.mat").read_bytes()
    (src / "test_32x32.mat").write_bytes(data[: len(data) // 2])
    code, err = build(
        ["svhn", "--from", str(src), "--out", str(tmp_path / "o3"), "--no-verify", "--no-extra"],
        capsys,
    )
    assert code == 1 and "test_32x32.mat is truncated or not an SVHN .mat file" in err
    assert output_files(tmp_path / "o3") == []

    code, err = build(
        ["svhn", "--from", str(src), "--out", str(tmp_path / "o4"), "--no-extra"], capsys
    )
    assert code == 1 and "md5 mismatch" in err and "e26dedcc434d2e4c54c9b2d4a06d8373" in err


# ---------------------------------------------------------------------------------------------
# ImageNet


def smooth_image(rng, height, width):
    # Smooth content keeps JPEG and interpolation differences small enough to compare pixels.
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    phase = rng.uniform(0, 6, 3)
    return np.stack([127 + 100 * np.sin(4 * x + 3 * y + p) for p in phase], -1).astype(np.uint8)


IMAGENET_TRAIN = {
    "n01440764": [(375, 500), (400, 300)],
    "n01443537": [(480, 480)],
    "n00000001": [(150, 200), (640, 480)],
}
IMAGENET_VAL = {"n01440764": [(333, 500)], "n00000001": [(500, 375)]}


def write_imagenet_tree(root, rng, flat_val=False):
    """Writes the tree; returns ({relative path: (image, synset)}, ['VAL_FILE SYNSET' lines])."""

    def save(path, shape, synset):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        image = smooth_image(rng, *shape)
        cv2.imwrite(str(path), image, [cv2.IMWRITE_JPEG_QUALITY, 98])
        return image, synset

    images = {}
    for synset, shapes in IMAGENET_TRAIN.items():
        for k, shape in enumerate(shapes):
            rel = f"train/{synset}/{synset}_{k}.JPEG"
            images[rel] = save(root / rel, shape, synset)
    labels = []
    for synset, shapes in IMAGENET_VAL.items():
        for k, shape in enumerate(shapes):
            name = f"ILSVRC2012_val_{synset}{k}.JPEG"
            rel = f"val/{name}" if flat_val else f"val/{synset}/{name}"
            images[rel] = save(root / rel, shape, synset)
            labels.append(f"{name} {synset}")
    return images, labels


def check_imagenet_split(prefix, images, short_side):
    synsets = sorted(IMAGENET_TRAIN)
    rows = list_names(prefix)
    records = indexed_split(prefix)
    assert len(records) == len(rows)
    for (header, image), (_, _, rel) in zip(records, rows):
        source, synset = images[rel]
        assert header.label == synsets.index(synset)
        height, width = source.shape[:2]
        assert min(image.shape[:2]) == short_side
        assert abs(image.shape[1] / image.shape[0] - width / height) < 0.01
        reference = cv2.resize(source, image.shape[1::-1], interpolation=cv2.INTER_LINEAR)
        assert np.abs(image.astype(float) - reference).mean() < 3.0
    return [rel for _, _, rel in rows]


def test_imagenet_script_resizes_short_side_to_480_and_labels_by_sorted_synsets(tmp_path):
    images, _ = write_imagenet_tree(tmp_path / "ilsvrc", np.random.default_rng(11))
    out = tmp_path / "out"
    result = run_script("imagenet", "--from", tmp_path / "ilsvrc", "--out", out, "--workers", "2")
    assert result.returncode == 0, result.stderr
    assert (out / "synsets.txt").read_text().split() == sorted(IMAGENET_TRAIN)
    train = check_imagenet_split(out / "train", images, 480)
    val = check_imagenet_split(out / "val", images, 480)
    assert sorted(train) == sorted(r for r in images if r.startswith("train/"))
    assert sorted(val) == sorted(r for r in images if r.startswith("val/"))
    data, labels = iter_split(out / "val", 2, shape=(3, 224, 224))
    assert data.shape == (2, 224, 224, 3) and sorted(labels) == [0.0, 1.0]


def test_imagenet_flat_val_uses_label_file_and_unlabelled_or_corrupt_images_are_named(
    tmp_path, capsys
):
    root = tmp_path / "ilsvrc"
    images, labels = write_imagenet_tree(root, np.random.default_rng(12), flat_val=True)
    label_file = tmp_path / "val_labels.txt"
    label_file.write_text(
        "ImageId,PredictionString\n"
        + "\n".join(line.replace(" ", ",") + " 1 2 3 4" for line in labels)
    )
    argv = ["imagenet", "--from", str(root), "--workers", "2", "--resize", "64", "--quality", "90"]
    code, err = build(
        argv + ["--out", str(tmp_path / "out"), "--val-labels", str(label_file)], capsys
    )
    assert code == 0, err
    check_imagenet_split(tmp_path / "out" / "val", images, 64)

    code, err = build(argv + ["--out", str(tmp_path / "o2")], capsys)
    assert code == 1 and "pass --val-labels" in err
    label_file.write_text(labels[0] + "\n")
    code, err = build(
        argv + ["--out", str(tmp_path / "o2"), "--val-labels", str(label_file)], capsys
    )
    assert (
        code == 1
        and "has no label for 1 file(s)" in err
        and "ILSVRC2012_val_n000000010.JPEG" in err
    )

    (root / "train" / "n01443537" / "broken.JPEG").write_bytes(b"not a jpeg")
    label_file.write_text("\n".join(labels))
    code, err = build(
        argv + ["--out", str(tmp_path / "o3"), "--val-labels", str(label_file)], capsys
    )
    assert code == 1 and "broken.JPEG: not a decodable image" in err
    assert output_files(tmp_path / "o3") == []


# ---------------------------------------------------------------------------------------------
# Command line


def test_script_in_a_clone_without_venv_creates_it_via_make_and_keeps_relative_paths(tmp_path):
    clone = tmp_path / "clone"
    shutil.copytree(os.path.join(ROOT, "tools"), clone / "tools",
                    ignore=shutil.ignore_patterns("__pycache__"))
    os.chmod(clone / "tools" / "make_rec.sh", 0o755)
    # A stand-in for the real `make venv` (a pip install): link the project's venv.
    (clone / "Makefile").write_text(f"venv:\n\tln -s {os.path.join(ROOT, '.venv')} .venv\n")
    work = tmp_path / "elsewhere"
    work.mkdir()
    result = subprocess.run(
        [
            str(clone / "tools" / "make_rec.sh"),
            "demo",
            "--out",
            "rel",
            "--num-train",
            "20",
            "--num-test",
            "10",
        ],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "creating it with 'make -C" in result.stderr and os.path.islink(clone / ".venv")
    assert len(indexed_split(work / "rel" / "train")) == 20


def test_script_reports_user_errors_without_traceback(tmp_path):
    result = run_script("cifar10", "--from", tmp_path / "missing.tar.gz", "--out", tmp_path / "o")
    assert result.returncode == 1
    assert (
        "make_rec.sh cifar10: error: --from:" in result.stderr and "Traceback" not in result.stderr
    )
    result = run_script("imagenet", "--from", tmp_path, "--quality", "101")
    assert (
        result.returncode == 2
        and "--quality" in result.stderr
        and "between 1 and 100" in result.stderr
    )
    result = run_script("mnist")
    assert result.returncode == 2 and "invalid choice: 'mnist'" in result.stderr
