"""Builds MXNet RecordIO image sets: CIFAR-10/100, SVHN, ImageNet and the procedural demo set.

Run through tools/make_rec.sh (which provides the venv); `python -m tools.make_rec --help` from the
repository root works too. Every split is written as NAME.rec/.idx/.lst plus synsets.txt (class
names in label order) and make_rec.json (what was built, with which options, how many records).
All files are first written under temporary names and renamed only after every split succeeded,
with make_rec.json last, so a failure, a full disk or Ctrl-C never leaves a half file under a
final name, and an existing complete set is kept unless --force.
"""

import argparse
import dataclasses
import errno
import hashlib
import importlib.util
import io
import json
import multiprocessing
import os
import pickle
import posixpath
import random
import signal
import sys
import tarfile
import time
import urllib.error
import urllib.request
import zlib

import numpy as np

from tools import demo_images

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PARTIAL = ".partial"
INFO_FILE = "make_rec.json"
PNG_COMPRESSION = 3
SHUFFLE_SEED = 0


class DataError(Exception):
    """A user-facing failure (bad input, wrong checksum, unsafe archive); the message says what
    to do."""


def default_out(dataset):
    return os.path.join(ROOT, "data", dataset)


# ---------------------------------------------------------------------------------------------
# Writing records


def _log(message):
    print(message, flush=True)


class _Progress:
    """Prints a line at every 10% so long conversions show they are alive without flooding logs."""

    def __init__(self, label, total):
        self.label, self.total, self.start, self.next_step = label, total, time.time(), 1

    def update(self, done):
        if self.total and (done * 10 >= self.next_step * self.total or done == self.total):
            elapsed = time.time() - self.start
            rate = done / elapsed if elapsed > 0 else float("inf")
            eta = (self.total - done) / rate if rate > 0 else 0.0
            _log(
                f"  {self.label}: {done}/{self.total} ({100 * done // self.total}%), "
                f"{rate:.0f} img/s, {elapsed:.0f} s elapsed, ~{eta:.0f} s left"
            )
            self.next_step = done * 10 // self.total + 1


@dataclasses.dataclass(frozen=True)
class Split:
    """One output split: `records` yields (label, encoded image bytes, name for the .lst)
    `count` times."""

    name: str
    count: int
    records: object


def encode_png(rgb):
    import cv2

    ok, buf = cv2.imencode(
        ".png",
        np.ascontiguousarray(rgb[:, :, ::-1]),
        [cv2.IMWRITE_PNG_COMPRESSION, PNG_COMPRESSION],
    )
    if not ok:
        raise DataError(f"OpenCV could not encode an image of shape {rgb.shape} as PNG")
    return buf.tobytes()


def _split_paths(out_dir, name):
    return [os.path.join(out_dir, name + ext) for ext in (".lst", ".idx", ".rec")]


def _write_split(out_dir, split, label_count):
    """Writes split.* under temporary names; returns the number of records written."""
    import mxnet as mx

    lst_path, idx_path, rec_path = (p + PARTIAL for p in _split_paths(out_dir, split.name))
    progress = _Progress(split.name, split.count)
    written, writer = 0, None
    try:
        writer = mx.recordio.MXIndexedRecordIO(idx_path, rec_path, "w")
        with open(lst_path, "w") as lst:
            for label, image, name in split.records:
                if not 0 <= label < label_count:
                    raise DataError(f"{name}: label {label} outside 0..{label_count - 1}")
                header = mx.recordio.IRHeader(0, float(label), written, 0)
                writer.write_idx(written, mx.recordio.pack(header, image))
                lst.write(f"{written}\t{float(label):f}\t{name}\n")
                written += 1
                progress.update(written)
    except mx.base.MXNetError as e:
        raise DataError(
            f"writing {rec_path} failed (disk full?): {str(e).splitlines()[0]}"
        ) from None
    finally:
        if writer is not None:
            writer.close()
        # Stops worker pools at once when writing ends early, instead of at garbage collection.
        getattr(split.records, "close", lambda: None)()
    if written != split.count:
        raise DataError(f"{split.name}: expected {split.count} images, got {written}")
    return written


def _remove(paths):
    for path in paths:
        try:
            os.remove(path)
        except FileNotFoundError:
            pass


def read_info(out_dir):
    """make_rec.json of a complete set in out_dir, or None when the set is missing or incomplete."""
    try:
        with open(os.path.join(out_dir, INFO_FILE)) as f:
            info = json.load(f)
    except (OSError, ValueError):
        return None
    names = list(info.get("counts", {})) if isinstance(info, dict) else []
    files = [p for name in names for p in _split_paths(out_dir, name)] + [
        os.path.join(out_dir, "synsets.txt")
    ]
    return info if names and all(os.path.isfile(p) for p in files) else None


def existing_set(out_dir, dataset, options, force):
    """The info of a complete set to keep, or None when it must be built; a set built with other
    options is an error rather than silently kept or replaced."""
    existing = read_info(out_dir)
    if existing is None or force:
        return None
    if existing.get("dataset") == dataset and existing.get("options") == options:
        _log(
            f"{out_dir}: complete {dataset} records already there "
            f"({', '.join(f'{k} {v}' for k, v in existing['counts'].items())}); --force rebuilds"
        )
        return existing
    raise DataError(
        f"{out_dir} holds {existing.get('dataset')} records built with options "
        f"{existing.get('options')}, not {dataset} with {options}; "
        "pass --force to replace them or choose another --out"
    )


def write_dataset(out_dir, dataset, options, class_names, splits):
    """Writes all splits, synsets.txt and make_rec.json into out_dir; returns the info dict."""
    synsets = os.path.join(out_dir, "synsets.txt")
    info_path = os.path.join(out_dir, INFO_FILE)
    temporaries = [synsets + PARTIAL]
    counts = {}
    try:
        os.makedirs(out_dir, exist_ok=True)
        with open(synsets + PARTIAL, "w") as f:
            f.writelines(f"{name}\n" for name in class_names)
        for split in splits:
            temporaries += [p + PARTIAL for p in _split_paths(out_dir, split.name)]
            _log(f"writing {split.name} ({split.count} images) to {out_dir}")
            counts[split.name] = _write_split(out_dir, split, len(class_names))
        info = {
            "dataset": dataset,
            "options": options,
            "classes": len(class_names),
            "counts": counts,
        }
        temporaries.append(info_path + PARTIAL)
        with open(info_path + PARTIAL, "w") as f:
            json.dump(info, f, indent=1)
        # The old marker goes first and the new one last: an interruption in between reads as
        # "incomplete", never as a finished set of mixed files.
        _remove([info_path])
        for temporary in temporaries:
            os.replace(temporary, temporary[: -len(PARTIAL)])
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise DataError(
                f"no space left on the device holding {out_dir}; partial files removed"
            ) from None
        raise DataError(
            f"cannot write {e.filename or out_dir}: {e.strerror or e}; partial files removed"
        ) from None
    finally:
        _remove(temporaries)
    _log(f"done: {out_dir} ({', '.join(f'{k} {v}' for k, v in counts.items())})")
    return info


# ---------------------------------------------------------------------------------------------
# Inputs: checksums, downloads, archives


def md5sum(path):
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_md5(path, expected, downloaded=False):
    _log(f"verifying md5 of {path}")
    actual = md5sum(path)
    if actual != expected:
        hint = (
            "the download was removed; run again to fetch it anew"
            if downloaded
            else "the file is truncated, corrupt or a different release; use the official file, "
            "or --no-verify for a re-packed file in the same format"
        )
        if downloaded:
            _remove([path])
        raise DataError(f"md5 mismatch for {path}: expected {expected}, got {actual}; {hint}")


def download(url, dest):
    """Fetches url to dest (via a temporary name); a failure names --from as the offline route."""
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    _log(f"downloading {url} -> {dest}")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(dest + PARTIAL, "wb") as f:
            total = int(response.headers.get("Content-Length") or 0)
            progress = _Progress(os.path.basename(dest) + " (MiB)", total >> 20)
            done = 0
            for block in iter(lambda: response.read(1 << 20), b""):
                f.write(block)
                done += len(block)
                progress.update(done >> 20)
        os.replace(dest + PARTIAL, dest)
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise DataError(
            f"could not download {url} ({reason}). Without internet access, download the "
            "file elsewhere and pass it with --from"
        ) from None
    finally:
        _remove([dest + PARTIAL])


def locate_input(given, name, url, md5, out_dir, verify):
    """The local file to read: `given` (from --from), or a download into out_dir; md5-checked
    unless told not to."""
    if given is not None:
        if not os.path.isfile(given):
            raise DataError(f"--from: {given} does not exist or is not a file (expected {name})")
        path, downloaded = given, False
    else:
        path, downloaded = os.path.join(out_dir, name), True
        if os.path.isfile(path):
            _log(f"using earlier download {path}")
        else:
            download(url, path)
    if verify:
        verify_md5(path, md5, downloaded)
    return path


def _check_member(archive, member):
    name = posixpath.normpath(member.name)
    if name.startswith("/") or name == ".." or name.startswith("../") or ":" in name.split("/")[0]:
        raise DataError(
            f"{archive}: refusing unsafe tar member {member.name!r}: "
            "its path escapes the archive folder"
        )
    if member.issym() or member.islnk():
        raise DataError(f"{archive}: refusing unsafe tar member {member.name!r}: it is a link")
    if not (member.isfile() or member.isdir()):
        raise DataError(
            f"{archive}: refusing unsafe tar member {member.name!r}: not a regular file"
        )


def read_tar_members(archive, wanted):
    """{name: bytes} for the members in `wanted`, read in memory after every member passed the
    safety checks."""
    found = {}
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                _check_member(archive, member)
                # normpath: a re-packed archive may spell members "./cifar-10-batches-py/...".
                name = posixpath.normpath(member.name)
                if name in wanted and member.isfile():
                    found[name] = tar.extractfile(member).read()
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        raise DataError(f"{archive} is truncated or corrupt ({e}); download it again") from None
    missing = [name for name in wanted if name not in found]
    if missing:
        raise DataError(f"{archive} lacks {', '.join(missing)}: not the expected archive")
    return found


class _PlainDataUnpickler(pickle.Unpickler):
    """Admits only what CIFAR's pickles hold (numpy arrays, dtypes, plain containers): loading
    an untrusted pickle must never be able to call arbitrary functions. _codecs.encode is how
    Python 3 writes bytes at protocol 2, i.e. in a re-packed archive. numpy >= 2 names its
    array rebuilders numpy._core.*, numpy < 2 numpy.core.*: both are admitted and resolved in
    whichever this numpy has (_frombuffer is what numpy writes at protocol 5)."""

    ALLOWED = {("_codecs", "encode"), ("numpy", "ndarray"), ("numpy", "dtype")} | {
        (f"{package}.{module}", name)
        for package in ("numpy.core", "numpy._core")
        for module, name in (
            ("multiarray", "_reconstruct"),
            ("multiarray", "scalar"),
            ("numeric", "_frombuffer"),
        )
    }

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")
        if module.startswith("numpy."):
            package = "numpy._core" if importlib.util.find_spec("numpy._core") else "numpy.core"
            module = package + "." + module.rsplit(".", 1)[1]
        return super().find_class(module, name)


def load_plain_pickle(data, where):
    try:
        return _PlainDataUnpickler(io.BytesIO(data), encoding="bytes").load()
    except pickle.UnpicklingError as e:
        raise DataError(
            f"{where}: refusing to unpickle: {e} (CIFAR files hold only plain data)"
        ) from None
    except Exception as e:  # garbage input can raise nearly anything from inside pickle
        raise DataError(f"{where} is not a valid pickle ({type(e).__name__}: {e})") from None


# ---------------------------------------------------------------------------------------------
# CIFAR


@dataclasses.dataclass(frozen=True)
class CifarSpec:
    archive: str
    url: str
    md5: str
    folder: str
    train: tuple
    test: tuple
    meta: str


CIFAR = {
    "cifar10": CifarSpec(
        "cifar-10-python.tar.gz",
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        "c58f30108f718f92721af3b95e74349a",
        "cifar-10-batches-py",
        tuple(f"data_batch_{i}" for i in range(1, 6)),
        ("test_batch",),
        "batches.meta",
    ),
    "cifar100": CifarSpec(
        "cifar-100-python.tar.gz",
        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        "eb9058c3a382ffc7106e4002c42a8d85",
        "cifar-100-python",
        ("train",),
        ("test",),
        "meta",
    ),
}
# (key of the labels in a batch, key of the class names in the meta file)
CIFAR_LABELS = {
    "cifar10": (b"labels", b"label_names"),
    "fine": (b"fine_labels", b"fine_label_names"),
    "coarse": (b"coarse_labels", b"coarse_label_names"),
}


def _cifar_batch(where, batch, label_key, class_count):
    if not isinstance(batch, dict):
        raise DataError(f"{where}: expected a pickled dict, found {type(batch).__name__}")
    data, labels = batch.get(b"data"), batch.get(label_key)
    if data is None or labels is None:
        raise DataError(f"{where}: needs keys b'data' and {label_key!r}; found {sorted(batch)}")
    if not (
        isinstance(data, np.ndarray)
        and data.dtype == np.uint8
        and data.ndim == 2
        and data.shape[1] == 3072
    ):
        raise DataError(
            f"{where}: b'data' must be an N x 3072 uint8 array, found "
            f"{getattr(data, 'dtype', type(data).__name__)} {getattr(data, 'shape', '')}"
        )
    labels = np.asarray(labels)
    if labels.shape != (len(data),) or labels.dtype.kind not in "iu":
        raise DataError(
            f"{where}: {label_key!r} must hold {len(data)} integers, "
            f"found {labels.dtype} {labels.shape}"
        )
    if len(labels) and (labels.min() < 0 or labels.max() >= class_count):
        raise DataError(
            f"{where}: labels must lie in 0..{class_count - 1}, "
            f"found {labels.min()}..{labels.max()}"
        )
    names = batch.get(b"filenames")
    if not (isinstance(names, list) and len(names) == len(data)):
        names = None
    # Stored as three 1024-byte colour planes per row: R, G, B.
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels, names


def _cifar_records(batches):
    for batch_name, (images, labels, names) in batches:
        for i, (image, label) in enumerate(zip(images, labels)):
            name = names[i].decode("utf-8", "replace") if names else f"{batch_name}/{i:05d}.png"
            yield int(label), encode_png(image), name


def build_cifar(dataset, out_dir, archive=None, verify=True, coarse=False, force=False):
    spec = CIFAR[dataset]
    labels_kind = "coarse" if coarse else ("fine" if dataset == "cifar100" else "cifar10")
    label_key, names_key = CIFAR_LABELS[labels_kind]
    options = {"labels": labels_kind} if dataset == "cifar100" else {}
    kept = existing_set(out_dir, dataset, options, force)
    if kept:
        return kept

    path = locate_input(archive, spec.archive, spec.url, spec.md5, out_dir, verify)

    def member(name):
        return f"{spec.folder}/{name}"

    _log(f"reading {path}")
    contents = read_tar_members(path, [member(n) for n in spec.train + spec.test + (spec.meta,)])
    meta = load_plain_pickle(contents[member(spec.meta)], f"{path}:{member(spec.meta)}")
    class_names = meta.get(names_key) if isinstance(meta, dict) else None
    if not (isinstance(class_names, list) and class_names):
        raise DataError(f"{path}:{member(spec.meta)}: needs a non-empty list under {names_key!r}")
    class_names = [
        n.decode("utf-8", "replace") if isinstance(n, bytes) else str(n) for n in class_names
    ]

    def split(name, batch_names):
        batches = []
        for b in batch_names:
            where = f"{path}:{member(b)}"
            batches.append(
                (
                    b,
                    _cifar_batch(
                        where,
                        load_plain_pickle(contents[member(b)], where),
                        label_key,
                        len(class_names),
                    ),
                )
            )
        return Split(
            name, sum(len(labels) for _, (_, labels, _) in batches), _cifar_records(batches)
        )

    return write_dataset(
        out_dir,
        dataset,
        options,
        class_names,
        [split("train", spec.train), split("test", spec.test)],
    )


# ---------------------------------------------------------------------------------------------
# SVHN

SVHN_URL = "http://ufldl.stanford.edu/housenumbers/"
SVHN = {
    "train": ("train_32x32.mat", "e26dedcc434d2e4c54c9b2d4a06d8373"),
    "test": ("test_32x32.mat", "eb5a983be6a315427106f1b164d9cef3"),
    "extra": ("extra_32x32.mat", "a93ce644f1a588dc4d68dda5feec44a7"),
}


def load_svhn_mat(path):
    """(images (N,32,32,3) uint8 RGB view, labels (N,) in 0..9) from an SVHN cropped-digits
    .mat file."""
    import scipy.io

    try:
        mat = scipy.io.loadmat(path, variable_names=["X", "y"])
    except Exception as e:  # scipy raises many types for truncated or foreign files
        raise DataError(
            f"{path} is truncated or not an SVHN .mat file ({type(e).__name__}: {e})"
        ) from None
    x, y = mat.get("X"), mat.get("y")
    if x is None or y is None:
        raise DataError(
            f"{path}: needs variables X and y; "
            f"found {sorted(k for k in mat if not k.startswith('__'))}"
        )
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[:3] != (32, 32, 3):
        raise DataError(f"{path}: X must be a 32x32x3xN uint8 array, found {x.dtype} {x.shape}")
    y = np.asarray(y).reshape(-1)
    if (
        y.shape != (x.shape[3],)
        or y.dtype.kind not in "iuf"
        or not np.all(np.isin(y, np.arange(1, 11)))
    ):
        raise DataError(
            f"{path}: y must hold {x.shape[3]} labels in 1..10, found {y.dtype} {y.shape}"
        )
    # SVHN writes digit 0 as label 10.
    return np.moveaxis(x, 3, 0), (y.astype(np.int64) % 10)


def _svhn_records(paths, order):
    """Records for the concatenation of the .mat files in `paths`, in the given global order."""
    loaded = [load_svhn_mat(p) for p in paths]
    offsets = np.cumsum([0] + [len(labels) for _, labels in loaded])
    for index in order:
        part = int(np.searchsorted(offsets, index, side="right")) - 1
        images, labels = loaded[part]
        local = int(index - offsets[part])
        stem = os.path.splitext(os.path.basename(paths[part]))[0]
        yield int(labels[local]), encode_png(images[local]), f"{stem}/{local:06d}.png"


def _mat_count(path):
    import scipy.io

    try:
        shapes = {name: shape for name, shape, _ in scipy.io.whosmat(path)}
    except Exception as e:
        raise DataError(
            f"{path} is truncated or not an SVHN .mat file ({type(e).__name__}: {e})"
        ) from None
    if len(shapes.get("X", ())) != 4:
        raise DataError(f"{path}: needs a 32x32x3xN variable X; found {shapes}")
    return shapes["X"][3]


def build_svhn(out_dir, source_dir=None, verify=True, extra=True, force=False):
    options = {"extra": extra}
    kept = existing_set(out_dir, "svhn", options, force)
    if kept:
        return kept
    if source_dir is not None and not os.path.isdir(source_dir):
        raise DataError(
            f"--from: {source_dir} is not a directory (expected one holding "
            f"{', '.join(name for name, _ in SVHN.values())})"
        )
    parts = ["train", "test"] + (["extra"] if extra else [])
    paths = {}
    for part in parts:
        name, md5 = SVHN[part]
        given = os.path.join(source_dir, name) if source_dir is not None else None
        paths[part] = locate_input(given, name, SVHN_URL + name, md5, out_dir, verify)

    train_paths = [paths["train"]] + ([paths["extra"]] if extra else [])
    train_count = sum(_mat_count(p) for p in train_paths)
    test_count = _mat_count(paths["test"])
    # train and extra come grouped by source photo; a fixed shuffle lets a reader without
    # random access (no .idx) still see mixed batches.
    order = np.random.default_rng(SHUFFLE_SEED).permutation(train_count)

    return write_dataset(
        out_dir,
        "svhn",
        options,
        [str(d) for d in range(10)],
        [
            Split("train", train_count, _svhn_records(train_paths, order)),
            Split("test", test_count, _svhn_records([paths["test"]], range(test_count))),
        ],
    )


# ---------------------------------------------------------------------------------------------
# ImageNet

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")


def _images_in(folder):
    return sorted(
        f
        for f in os.listdir(folder)
        if f.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(folder, f))
    )


def _subfolders(folder):
    return sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d)))


def read_val_labels(path, synsets):
    """{file name or stem: class index} from lines 'NAME SYNSET' or 'NAME INDEX' (space or comma
    separated; extra fields, such as the boxes of LOC_val_solution.csv, and a header are
    ignored)."""
    index = {s: i for i, s in enumerate(synsets)}
    labels = {}
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise DataError(f"--val-labels: cannot read {path} ({e.strerror})") from None
    for number, line in enumerate(lines, 1):
        fields = line.replace(",", " ").split()
        if not fields:
            continue
        if len(fields) < 2:
            raise DataError(
                f"--val-labels {path}:{number}: expected 'FILE SYNSET' or 'FILE INDEX', "
                f"got {line!r}"
            )
        name, label = fields[0], fields[1]
        if label in index:
            labels[name] = index[label]
        elif label.isdigit() and int(label) < len(synsets):
            labels[name] = int(label)
        elif number == 1:
            continue  # a header line such as "ImageId,PredictionString"
        else:
            raise DataError(
                f"--val-labels {path}:{number}: {label!r} is neither a synset of the train "
                f"folder nor a class index 0..{len(synsets) - 1}"
            )
    return labels


def scan_imagenet(root, val_labels=None):
    """(synsets, train items, val items); items are (relative path, class index), synsets sorted."""
    train_dir, val_dir = os.path.join(root, "train"), os.path.join(root, "val")
    for folder in (train_dir, val_dir):
        if not os.path.isdir(folder):
            raise DataError(
                f"--from {root}: needs sub-folders train/ and val/; {folder} is missing"
            )
    synsets = _subfolders(train_dir)
    if not synsets:
        raise DataError(
            f"{train_dir}: expected one sub-folder per class (e.g. n01440764/), found none"
        )
    train = []
    for label, synset in enumerate(synsets):
        files = _images_in(os.path.join(train_dir, synset))
        if not files:
            raise DataError(f"{train_dir}/{synset}: no images ({', '.join(IMAGE_EXTENSIONS)})")
        train += [(f"train/{synset}/{f}", label) for f in files]

    val_classes = _subfolders(val_dir)
    if val_classes:
        unknown = sorted(set(val_classes) - set(synsets))
        if unknown:
            raise DataError(f"{val_dir}: class folders not in train/: {', '.join(unknown[:5])}")
        label_of = {s: i for i, s in enumerate(synsets)}
        val = [
            (f"val/{s}/{f}", label_of[s])
            for s in val_classes
            for f in _images_in(os.path.join(val_dir, s))
        ]
    else:
        if val_labels is None:
            raise DataError(
                f"{val_dir} holds no class sub-folders; pass --val-labels FILE with lines "
                "'ILSVRC2012_val_00000001.JPEG n01751748'"
            )
        labels = read_val_labels(val_labels, synsets)
        val, unlabelled = [], []
        for f in _images_in(val_dir):
            label = labels.get(f, labels.get(os.path.splitext(f)[0]))
            if label is None:
                unlabelled.append(f)
            else:
                val.append((f"val/{f}", label))
        if unlabelled:
            raise DataError(
                f"--val-labels {val_labels} has no label for {len(unlabelled)} file(s) "
                f"of {val_dir}, "
                f"e.g. {', '.join(unlabelled[:3])}"
            )
    if not val:
        raise DataError(f"{val_dir}: no images ({', '.join(IMAGE_EXTENSIONS)})")
    return synsets, train, val


def _worker_signals():
    # Ctrl-C goes to the whole process group; only the parent handles it (and stops the pool),
    # and pool.terminate() must end a worker with the plain default SIGTERM.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def encode_imagenet_image(task):
    """(bytes, None) or (None, error): the image at path, short side resized, re-encoded as JPEG."""
    import cv2

    path, short_side, quality = task
    try:
        image = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_COLOR)
    except (OSError, cv2.error) as e:
        return None, str(e)
    if image is None:
        return None, "not a decodable image"
    if short_side:
        height, width = image.shape[:2]
        scale = short_side / min(height, width)
        size = (
            (short_side, max(1, round(height * scale)))
            if width <= height
            else (max(1, round(width * scale)), short_side)
        )
        image = cv2.resize(
            image, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
        )
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    return (buf.tobytes(), None) if ok else (None, "JPEG encoding failed")


def _imagenet_records(root, items, short_side, quality, workers):
    tasks = [(os.path.join(root, rel), short_side, quality) for rel, _ in items]
    pool = multiprocessing.get_context("fork").Pool(workers, initializer=_worker_signals)
    try:
        for (rel, label), (image, error) in zip(
            items, pool.imap(encode_imagenet_image, tasks, chunksize=8)
        ):
            if error is not None:
                raise DataError(f"{os.path.join(root, rel)}: {error}; remove or replace the file")
            yield label, image, rel
        pool.close()
    finally:
        pool.terminate()
        pool.join()


def build_imagenet(
    out_dir, root, val_labels=None, short_side=480, quality=95, workers=None, force=False
):
    options = {"resize": short_side, "quality": quality}
    kept = existing_set(out_dir, "imagenet", options, force)
    if kept:
        return kept
    _log(f"scanning {root}")
    synsets, train, val = scan_imagenet(root, val_labels)
    _log(f"found {len(synsets)} classes, {len(train)} train and {len(val)} val images")
    random.Random(SHUFFLE_SEED).shuffle(
        train
    )  # like im2rec: readers without an .idx get mixed batches
    workers = workers or os.cpu_count() or 1
    return write_dataset(
        out_dir,
        "imagenet",
        options,
        synsets,
        [
            Split(
                "train", len(train), _imagenet_records(root, train, short_side, quality, workers)
            ),
            Split("val", len(val), _imagenet_records(root, val, short_side, quality, workers)),
        ],
    )


# ---------------------------------------------------------------------------------------------
# Demo


def make_demo(out_dir=None, seed=0, num_train=5000, num_test=1000, force=False):
    """Writes the procedural demo set (tools/demo_images.py) to out_dir (default data/demo).

    Returns the dict stored in make_rec.json (dataset, options, classes, counts)."""
    if num_train < 1 or num_test < 1:
        raise ValueError(f"num_train and num_test must be positive, got {num_train} and {num_test}")
    out_dir = out_dir or default_out("demo")
    options = {"seed": seed, "num_train": num_train, "num_test": num_test}

    def split(name, count, stream):
        images, labels = demo_images.generate(count, [seed, stream])
        return Split(
            name,
            count,
            (
                (int(label), encode_png(image), f"{name}/{i:05d}.png")
                for i, (image, label) in enumerate(zip(images, labels))
            ),
        )

    kept = existing_set(out_dir, "demo", options, force)
    if kept:
        return kept
    return write_dataset(
        out_dir,
        "demo",
        options,
        demo_images.CLASS_NAMES,
        [split("train", num_train, 0), split("test", num_test, 1)],
    )


# ---------------------------------------------------------------------------------------------
# Command line


def _int_in(low, high=None):
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low or (high is not None and value > high):
            bound = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {value}")
        return value

    return parse


def build_parser():
    parser = argparse.ArgumentParser(
        prog="make_rec.sh",
        description="Build MXNet RecordIO files (train/test, ImageNet train/val) for a dataset.",
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--out", metavar="DIR", help="output folder (default: data/DATASET in the repository)"
    )
    common.add_argument(
        "--force", action="store_true", help="rebuild even when complete records exist"
    )
    checked = argparse.ArgumentParser(add_help=False)
    checked.add_argument(
        "--no-verify",
        dest="verify",
        action="store_false",
        help="skip the md5 check (for a re-packed file in the official format)",
    )
    sub = parser.add_subparsers(dest="dataset", metavar="DATASET", required=True)

    for name in CIFAR:
        p = sub.add_parser(
            name, parents=[common, checked], help=f"{name} from {CIFAR[name].archive}"
        )
        p.add_argument(
            "--from",
            dest="source",
            metavar="ARCHIVE",
            help=f"local {CIFAR[name].archive} (default: download {CIFAR[name].url})",
        )
        if name == "cifar100":
            p.add_argument(
                "--coarse",
                action="store_true",
                help="label with the 20 superclasses, not the 100 classes",
            )

    p = sub.add_parser(
        "svhn", parents=[common, checked], help="SVHN cropped digits (train+extra / test)"
    )
    p.add_argument(
        "--from",
        dest="source",
        metavar="DIR",
        help="folder holding train_32x32.mat, test_32x32.mat, extra_32x32.mat (default: download)",
    )
    p.add_argument(
        "--no-extra", dest="extra", action="store_false", help="train on train_32x32.mat alone"
    )

    p = sub.add_parser(
        "imagenet", parents=[common], help="ILSVRC2012 from extracted train/ and val/ folders"
    )
    p.add_argument(
        "--from",
        dest="source",
        metavar="DIR",
        required=True,
        help="folder with train/<synset>/*.JPEG and val/ (class sub-folders or flat files)",
    )
    p.add_argument(
        "--val-labels",
        metavar="FILE",
        help="labels for a flat val/: lines 'FILE SYNSET' or 'FILE INDEX'",
    )
    p.add_argument(
        "--resize",
        type=_int_in(0),
        default=480,
        help="short side in pixels, 0 keeps the size (default 480)",
    )
    p.add_argument("--quality", type=_int_in(1, 100), default=95, help="JPEG quality (default 95)")
    p.add_argument(
        "--workers",
        type=_int_in(1),
        default=os.cpu_count() or 1,
        help="encoding processes (default: all cores)",
    )

    p = sub.add_parser("demo", parents=[common], help="procedural 10-class 32x32 set (no download)")
    p.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    p.add_argument(
        "--num-train", type=_int_in(1), default=5000, help="training images (default 5000)"
    )
    p.add_argument("--num-test", type=_int_in(1), default=1000, help="test images (default 1000)")
    return parser


def run(args):
    out = os.path.abspath(args.out) if args.out else default_out(args.dataset)
    if args.dataset in CIFAR:
        return build_cifar(
            args.dataset, out, args.source, args.verify, getattr(args, "coarse", False), args.force
        )
    if args.dataset == "svhn":
        return build_svhn(out, args.source, args.verify, args.extra, args.force)
    if args.dataset == "imagenet":
        return build_imagenet(
            out, args.source, args.val_labels, args.resize, args.quality, args.workers, args.force
        )
    return make_demo(out, args.seed, args.num_train, args.num_test, args.force)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv=None):
    args = build_parser().parse_args(argv)
    # `kill` cleans up like Ctrl-C does: no .partial files left behind.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        run(args)
    except DataError as e:
        print(f"make_rec.sh {args.dataset}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"make_rec.sh {args.dataset}: interrupted; partial files removed", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0


if __name__ == "__main__":
    sys.exit(main())
