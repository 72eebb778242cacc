"""Inputs in the exact upstream formats (CIFAR archives, SVHN .mat files) and MXNet's own
readers of the records, shared by the data-set tests."""
import io
import os
import pickle
import subprocess
import tarfile

import cv2
import mxnet as mx
import numpy as np
import scipy.io

from tools import make_rec

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
