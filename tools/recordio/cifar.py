"""CIFAR-10 / CIFAR-100 from the official python archives."""

import dataclasses

import numpy as np

from .sources import load_plain_pickle, locate_input, read_tar_members
from .writer import DataError, Split, encode_png, existing_set, log, write_dataset


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

    log(f"reading {path}")
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
