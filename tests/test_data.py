"""tools/make_rec.sh and tools/make_rec.py: tiny inputs in the exact upstream formats go in, the
records are read back with MXNet's own readers and compared with the source pixels and labels."""

import dataclasses
import hashlib
import io
import os
import pickle
import shutil
import subprocess
import sys
import tarfile

import cv2
import mxnet as mx
import numpy as np
import pytest
import scipy.io

from tools import demo_images, make_rec
from tools.recordio import demo as demo_builder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "tools", "make_rec.sh")
OUTPUT_SUFFIXES = (".rec", ".idx", ".lst", ".partial", ".json", ".txt")


# ---------------------------------------------------------------------------------------------
# Builders of upstream-format inputs


def add_member(tar, name, data=None, **fields):
    info = tarfile.TarInfo(name)
    for key, value in fields.items():
        setattr(info, key, value)
    if data is None:
        tar.addfile(info)
    else:
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


def write_cifar_archive(path, folder, members, extra=()):
    """A tar.gz like the official one: a folder member, then one protocol-2 pickle per member."""
    with tarfile.open(path, "w:gz") as tar:
        add_member(tar, folder, type=tarfile.DIRTYPE, mode=0o755)
        for name, obj in members.items():
            add_member(tar, f"{folder}/{name}", pickle.dumps(obj, protocol=2))
        for name, data, fields in extra:
            add_member(tar, name, data, **fields)
    return str(path)


def cifar_batch(rng, count, label_keys, tag):
    batch = {
        b"batch_label": tag.encode(),
        b"data": rng.integers(0, 256, (count, 3072), dtype=np.uint8),
        b"filenames": [f"{tag}_{i}.png".encode() for i in range(count)],
    }
    for key, classes in label_keys.items():
        batch[key] = [int(v) for v in rng.integers(0, classes, count)]
    return batch


def cifar10_members(rng, per_batch=4, test=6):
    members = {
        f"data_batch_{i}": cifar_batch(rng, per_batch, {b"labels": 10}, f"b{i}")
        for i in range(1, 6)
    }
    members["test_batch"] = cifar_batch(rng, test, {b"labels": 10}, "test")
    members["batches.meta"] = {
        b"label_names": [f"class{i}".encode() for i in range(10)],
        b"num_cases_per_batch": per_batch,
        b"num_vis": 3072,
    }
    return members


def cifar100_members(rng):
    keys = {b"fine_labels": 100, b"coarse_labels": 20}
    return {
        "train": cifar_batch(rng, 12, keys, "train"),
        "test": cifar_batch(rng, 5, keys, "test"),
        "meta": {
            b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
            b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)],
        },
    }


def write_svhn_mat(path, rng, count):
    x = rng.integers(0, 256, (32, 32, 3, count), dtype=np.uint8)
    y = rng.integers(1, 11, (count, 1)).astype(np.uint8)
    y[:2, 0] = 10  # make sure the digit-0 convention is exercised
    scipy.io.savemat(str(path), {"X": x, "y": y})
    return x, y[:, 0]


# ---------------------------------------------------------------------------------------------
# Readers (MXNet's own)


def run_script(*args, cwd=None):
    return subprocess.run(
        [SCRIPT, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def iter_split(prefix, count, shape=(3, 32, 32)):
    """All records of a split through mx.io.ImageRecordIter: (N,H,W,3) float RGB, labels."""
    it = mx.io.ImageRecordIter(
        path_imgrec=f"{prefix}.rec",
        data_shape=shape,
        batch_size=count,
        preprocess_threads=1,
        shuffle=False,
    )
    batch = it.next()
    return batch.data[0].asnumpy().transpose(0, 2, 3, 1), batch.label[0].asnumpy()


def indexed_split(prefix):
    """All records through MXIndexedRecordIO: [(header, BGR image)] in index order."""
    reader = mx.recordio.MXIndexedRecordIO(f"{prefix}.idx", f"{prefix}.rec", "r")
    try:
        return [
            mx.recordio.unpack_img(reader.read_idx(key), cv2.IMREAD_COLOR) for key in reader.keys
        ]
    finally:
        reader.close()


def list_names(prefix):
    with open(f"{prefix}.lst") as f:
        return [line.rstrip("\n").split("\t") for line in f]


def output_files(folder):
    if not os.path.isdir(folder):
        return []
    return sorted(f for f in os.listdir(folder) if f.endswith(OUTPUT_SUFFIXES))


def build(argv, capsys):
    """make_rec.main in-process: (exit code, stderr)."""
    code = make_rec.main(argv)
    return code, capsys.readouterr().err


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
# CIFAR


def test_cifar10_script_records_match_archive_pixels_labels_and_names(tmp_path):
    rng = np.random.default_rng(0)
    members = cifar10_members(rng)
    archive = write_cifar_archive(
        tmp_path / "cifar-10-python.tar.gz", "cifar-10-batches-py", members
    )
    out = tmp_path / "out"
    result = run_script("cifar10", "--from", archive, "--out", out, "--no-verify")
    assert result.returncode == 0, result.stderr

    for split, names in (
        ("train", [f"data_batch_{i}" for i in range(1, 6)]),
        ("test", ["test_batch"]),
    ):
        batches = [members[n] for n in names]
        source = (
            np.concatenate([b[b"data"] for b in batches])
            .reshape(-1, 3, 32, 32)
            .transpose(0, 2, 3, 1)
        )
        source_labels = np.concatenate([b[b"labels"] for b in batches])
        data, labels = iter_split(out / split, len(source))
        np.testing.assert_array_equal(data, source.astype(np.float32))
        np.testing.assert_array_equal(labels, source_labels)
        assert [row[2] for row in list_names(out / split)] == [
            n.decode() for b in batches for n in b[b"filenames"]
        ]
        assert len(indexed_split(out / split)) == len(source)
    assert (out / "synsets.txt").read_text().split() == [f"class{i}" for i in range(10)]


@pytest.mark.parametrize("coarse", [False, True])
def test_cifar100_records_carry_fine_labels_or_coarse_with_flag(tmp_path, capsys, coarse):
    members = cifar100_members(np.random.default_rng(1))
    archive = write_cifar_archive(tmp_path / "c100.tar.gz", "cifar-100-python", members)
    out = tmp_path / "out"
    code, err = build(
        ["cifar100", "--from", archive, "--out", str(out), "--no-verify"]
        + (["--coarse"] if coarse else []),
        capsys,
    )
    assert code == 0, err
    key = b"coarse_labels" if coarse else b"fine_labels"
    for split in ("train", "test"):
        headers = [header for header, _ in indexed_split(out / split)]
        assert [h.label for h in headers] == [float(v) for v in members[split][key]]
        images = [image[:, :, ::-1] for _, image in indexed_split(out / split)]
        np.testing.assert_array_equal(
            np.stack(images), members[split][b"data"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        )
    assert len((out / "synsets.txt").read_text().split()) == (20 if coarse else 100)


def test_cifar_md5_is_checked_by_default_and_a_matching_archive_passes(
    tmp_path, capsys, monkeypatch
):
    members = cifar10_members(np.random.default_rng(2))
    archive = write_cifar_archive(tmp_path / "a.tar.gz", "cifar-10-batches-py", members)
    out = tmp_path / "out"
    code, err = build(["cifar10", "--from", archive, "--out", str(out)], capsys)
    assert code == 1
    assert (
        "md5 mismatch" in err and "c58f30108f718f92721af3b95e74349a" in err and "--no-verify" in err
    )
    assert output_files(out) == []

    actual = hashlib.md5(open(archive, "rb").read()).hexdigest()
    monkeypatch.setitem(
        make_rec.CIFAR, "cifar10", dataclasses.replace(make_rec.CIFAR["cifar10"], md5=actual)
    )
    code, err = build(["cifar10", "--from", archive, "--out", str(out)], capsys)
    assert code == 0, err
    assert len(indexed_split(out / "train")) == 20


def test_truncated_cifar_archive_is_rejected_without_outputs(tmp_path, capsys):
    members = cifar10_members(np.random.default_rng(3))
    archive = write_cifar_archive(tmp_path / "a.tar.gz", "cifar-10-batches-py", members)
    data = open(archive, "rb").read()
    with open(archive, "wb") as f:
        f.write(data[: len(data) // 2])
    out = tmp_path / "out"
    code, err = build(["cifar10", "--from", archive, "--out", str(out), "--no-verify"], capsys)
    assert code == 1 and "truncated or corrupt" in err
    assert output_files(out) == []


class _RunsCommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_pickle_that_calls_a_function_is_refused_and_never_runs(tmp_path, capsys):
    marker = tmp_path / "pwned"
    members = cifar10_members(np.random.default_rng(4))
    members["data_batch_2"][b"data"] = _RunsCommand(marker)
    archive = write_cifar_archive(tmp_path / "a.tar.gz", "cifar-10-batches-py", members)
    out = tmp_path / "out"
    code, err = build(["cifar10", "--from", archive, "--out", str(out), "--no-verify"], capsys)
    assert code == 1
    assert (
        "refusing to unpickle" in err and "system is not allowed" in err and "data_batch_2" in err
    )
    assert not marker.exists()
    assert output_files(out) == []


class _Numpy2Array:
    """Pickles as numpy >= 2 pickles an array: its rebuilders live in numpy._core (at protocol 2
    `_reconstruct` + the array state, at protocol 5 `_frombuffer` over the raw buffer)."""

    def __init__(self, array):
        self.array = np.ascontiguousarray(array)

    def __reduce_ex__(self, protocol):
        a = self.array
        if protocol >= 5:
            return _numpy2_frombuffer, (pickle.PickleBuffer(a), a.dtype, a.shape, "C")
        return _numpy2_reconstruct, (np.ndarray, (0,), b"b"), (1, a.shape, a.dtype, False,
                                                                 a.tobytes())


def _numpy2_reconstruct(*args):
    raise AssertionError("only named in the pickle, never called here")


def _numpy2_frombuffer(*args):
    raise AssertionError("only named in the pickle, never called here")


@pytest.fixture
def numpy2_names(monkeypatch):
    """numpy._core.multiarray._reconstruct and numpy._core.numeric._frombuffer, as numpy 2
    names them, so that pickle writes exactly those globals (this numpy is 1.x)."""
    import types
    for module, function in (("numpy._core.multiarray", _numpy2_reconstruct),
                             ("numpy._core.numeric", _numpy2_frombuffer)):
        fake = types.ModuleType(module)
        name = "_reconstruct" if function is _numpy2_reconstruct else "_frombuffer"
        setattr(fake, name, function)
        function.__module__, function.__qualname__ = module, name
        monkeypatch.setitem(sys.modules, module, fake)
    yield
    for function in (_numpy2_reconstruct, _numpy2_frombuffer):
        function.__module__ = __name__


def write_numpy2_cifar_archive(path, members, protocol):
    """Returns the pickled bytes of each member."""
    pickled = {}
    with tarfile.open(path, "w:gz") as tar:
        add_member(tar, "cifar-10-batches-py", type=tarfile.DIRTYPE, mode=0o755)
        for name, obj in members.items():
            if b"data" in obj:
                obj = {**obj, b"data": _Numpy2Array(obj[b"data"])}
            pickled[name] = pickle.dumps(obj, protocol=protocol)
            add_member(tar, f"cifar-10-batches-py/{name}", pickled[name])
    return pickled


@pytest.mark.parametrize("protocol", [2, 5])
def test_cifar_archive_pickled_by_numpy2_is_read(tmp_path, numpy2_names, protocol):
    members = cifar10_members(np.random.default_rng(7))
    archive = tmp_path / "cifar-10-python.tar.gz"
    last = write_numpy2_cifar_archive(archive, members, protocol)["data_batch_1"]
    expected_global = b"_frombuffer" if protocol == 5 else b"_reconstruct"
    assert b"numpy._core." in last and expected_global in last and b"numpy.core" not in last
    # The script runs in a fresh process: no fake numpy._core there.
    out = tmp_path / "out"
    result = run_script("cifar10", "--from", archive, "--out", out, "--no-verify")
    assert result.returncode == 0, result.stderr
    batches = [members[f"data_batch_{i}"] for i in range(1, 6)]
    source = np.concatenate([b[b"data"] for b in batches]).reshape(-1, 3, 32, 32)
    data, labels = iter_split(out / "train", len(source))
    np.testing.assert_array_equal(data, source.transpose(0, 2, 3, 1).astype(np.float32))
    np.testing.assert_array_equal(labels, np.concatenate([b[b"labels"] for b in batches]))


@pytest.mark.parametrize("module,name", [("numpy._core.multiarray", "_get_ndarray_c_version"),
                                         ("numpy._core.numeric", "fromfunction"),
                                         ("numpy.testing", "run_module_suite")])
def test_other_numpy_globals_are_still_refused(module, name):
    # GLOBAL opcode by hand: "c<module>\n<name>\n", then an empty tuple and REDUCE.
    data = b"\x80\x02c" + module.encode() + b"\n" + name.encode() + b"\n)R."
    with pytest.raises(make_rec.DataError, match=f"global {module}.{name} is not allowed"):
        make_rec.load_plain_pickle(data, "x")


@pytest.mark.parametrize(
    "member, fields, message",
    [
        ("../evil.txt", {}, "its path escapes the archive folder"),
        ("/tmp/evil.txt", {}, "its path escapes the archive folder"),
        ("cifar-10-batches-py/../../evil.txt", {}, "its path escapes the archive folder"),
        (
            "cifar-10-batches-py/link",
            {"type": tarfile.SYMTYPE, "linkname": "/etc/passwd"},
            "it is a link",
        ),
        (
            "cifar-10-batches-py/hard",
            {"type": tarfile.LNKTYPE, "linkname": "cifar-10-batches-py/test_batch"},
            "it is a link",
        ),
    ],
)
def test_tar_members_escaping_the_folder_or_links_are_refused(
    tmp_path, capsys, member, fields, message
):
    data = None if "type" in fields else b"x"
    archive = write_cifar_archive(
        tmp_path / "a.tar.gz",
        "cifar-10-batches-py",
        cifar10_members(np.random.default_rng(5)),
        extra=[(member, data, fields)],
    )
    out = tmp_path / "out"
    code, err = build(["cifar10", "--from", archive, "--out", str(out), "--no-verify"], capsys)
    assert code == 1 and "refusing unsafe tar member" in err and message in err
    assert output_files(out) == [] and not (tmp_path / "evil.txt").exists()


def test_cifar_batch_in_a_wrong_format_is_named(tmp_path, capsys):
    members = cifar10_members(np.random.default_rng(6))
    members["data_batch_4"][b"data"] = members["data_batch_4"][b"data"][:, :100]
    archive = write_cifar_archive(tmp_path / "a.tar.gz", "cifar-10-batches-py", members)
    code, err = build(
        ["cifar10", "--from", archive, "--out", str(tmp_path / "out"), "--no-verify"], capsys
    )
    assert code == 1 and "data_batch_4" in err and "N x 3072 uint8" in err
    assert output_files(tmp_path / "out") == []


def test_missing_input_and_failed_download_point_to_from(tmp_path, capsys, monkeypatch):
    code, err = build(
        ["cifar10", "--from", str(tmp_path / "nope.tar.gz"), "--out", str(tmp_path / "o")], capsys
    )
    assert code == 1 and "nope.tar.gz does not exist" in err
    # A closed local port fails at once, like a machine without internet access.
    monkeypatch.setitem(
        make_rec.CIFAR,
        "cifar10",
        dataclasses.replace(
            make_rec.CIFAR["cifar10"], url="http://127.0.0.1:9/cifar-10-python.tar.gz"
        ),
    )
    code, err = build(["cifar10", "--out", str(tmp_path / "o")], capsys)
    assert code == 1 and "could not download http://127.0.0.1:9/" in err and "--from" in err
    assert output_files(tmp_path / "o") == [] and not os.listdir(tmp_path / "o")


def test_complete_outputs_are_kept_other_options_refused_and_force_rebuilds(tmp_path, capsys):
    members = cifar100_members(np.random.default_rng(7))
    archive = write_cifar_archive(tmp_path / "c100.tar.gz", "cifar-100-python", members)
    out = tmp_path / "out"
    argv = ["cifar100", "--from", archive, "--out", str(out), "--no-verify"]
    assert build(argv, capsys)[0] == 0
    stamp = {f: os.stat(out / f).st_mtime_ns for f in os.listdir(out)}
    os.remove(archive)  # a kept set must not even need its input any more
    assert build(argv, capsys)[0] == 0
    assert {f: os.stat(out / f).st_mtime_ns for f in os.listdir(out)} == stamp

    code, err = build(argv + ["--coarse"], capsys)
    assert code == 1 and "--force" in err and "'labels': 'fine'" in err

    write_cifar_archive(archive, "cifar-100-python", cifar100_members(np.random.default_rng(8)))
    assert build(argv + ["--coarse", "--force"], capsys)[0] == 0
    assert max(h.label for h, _ in indexed_split(out / "train")) < 20


@pytest.mark.parametrize(
    "failure, code, message",
    [
        (KeyboardInterrupt(), 130, "interrupted; partial files removed"),
        (OSError(28, "No space left on device"), 1, "no space left on the device"),
    ],
)
def test_interrupt_or_full_disk_mid_write_leaves_no_file_under_a_final_name(
    tmp_path, capsys, monkeypatch, failure, code, message
):
    calls = []
    real_encode = make_rec.encode_png

    def encode_then_fail(image):
        calls.append(1)
        if len(calls) == 80:
            raise failure
        return real_encode(image)

    monkeypatch.setattr(demo_builder, "encode_png", encode_then_fail)
    out = tmp_path / "out"
    got, err = build(["demo", "--out", str(out), "--num-train", "100", "--num-test", "50"], capsys)
    assert got == code and message in err
    assert len(calls) == 80 and output_files(out) == []


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
