"""SVHN cropped digits from the official .mat files (train + extra, as the authors trained)."""

import os

import numpy as np

from .sources import locate_input
from .writer import SHUFFLE_SEED, DataError, Split, encode_png, existing_set, write_dataset

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
