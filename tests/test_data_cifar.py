"""tools/make_rec.sh cifar10 / cifar100: records equal the archive's pixels, labels and names;
md5, truncation, unsafe pickles and tar members, numpy >= 2 pickles, idempotence, interrupts."""
import dataclasses
import hashlib
import os
import pickle
import sys
import tarfile

import numpy as np
import pytest

from tools import make_rec
from tools.recordio import demo as demo_builder
from upstream import (
    add_member,
    build,
    cifar10_members,
    cifar100_members,
    indexed_split,
    iter_split,
    list_names,
    output_files,
    run_script,
    write_cifar_archive,
)

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
    assert not os.path.exists(tmp_path / "o")  # not even an empty folder


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
