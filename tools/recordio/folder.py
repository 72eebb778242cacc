"""A class-per-folder tree of the user's own images (torchvision's ImageFolder layout):

    DIR/cat/*.jpg, DIR/dog/*.png, ...                  a test split is held out per class
    DIR/train/cat/..., DIR/val/cat/... (or DIR/test/)  the given split is used

Every image (any size, JPEG/PNG/BMP/TIFF/WebP) is resized so its short side is --resize pixels
and centre-cropped to a square, the input the network sees (tools/predict.py makes the same
crop), and stored as JPEG. make_rec.json also records the class names, the image size and the
per-channel mean/std of the training images, which train_model.py --dataset folder reads."""

import hashlib
import math
import multiprocessing
import os
import random

import numpy as np

from .imagenet import _worker_signals
from .writer import SHUFFLE_SEED, DataError, Split, existing_set, log, write_dataset

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
SPLIT_NAMES = {"train": "train", "val": "test", "test": "test"}


def _visible(names):
    return sorted(n for n in names if not n.startswith("."))


def _images_under(folder):
    """Image files below `folder` (sub-folders included), as sorted paths relative to it."""
    found = []
    for parent, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = _visible(dirs)
        found += [os.path.relpath(os.path.join(parent, f), folder) for f in _visible(files)
                  if f.lower().endswith(IMAGE_EXTENSIONS)]
    return sorted(found)


def _class_folders(root):
    return _visible(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))


def _class_images(root, classes):
    """[(relative path, label)] of every image under root/<class>/, empty classes refused."""
    items = []
    for label, name in enumerate(classes):
        files = _images_under(os.path.join(root, name))
        if not files:
            raise DataError(f"{os.path.join(root, name)}: no images "
                            f"({', '.join(IMAGE_EXTENSIONS)})")
        items += [(os.path.join(name, f), label) for f in files]
    return items


def held_out(items, fraction, seed=SHUFFLE_SEED):
    """(train, test): per class, a seeded draw of round(fraction * n) images (at least one when
    the class has two or more) is held out, so every class is tested and the split does not
    depend on the order files were listed in."""
    train, test = [], []
    for label in sorted({label for _, label in items}):
        files = sorted(path for path, lab in items if lab == label)
        random.Random(f"{seed}/{label}").shuffle(files)
        count = min(len(files) - 1, max(1, round(fraction * len(files))))
        test += [(path, label) for path in files[:count]]
        train += [(path, label) for path in files[count:]]
    return train, test


def scan_folder(root, test_fraction):
    """(class names, train items, test items, how the split was made); items are (path relative
    to root, label), labels in sorted class-name order."""
    if not os.path.isdir(root):
        raise DataError(f"--from {root}: not a folder")
    top = _class_folders(root)
    given = [d for d in ("val", "test") if d in top]
    if "train" in top and given:
        if len(given) > 1:
            raise DataError(f"--from {root}: holds both val/ and test/; keep one held-out split")
        classes = _class_folders(os.path.join(root, "train"))
        if not classes:
            raise DataError(f"{os.path.join(root, 'train')}: expected one sub-folder per class")
        held = os.path.join(root, given[0])
        unknown = sorted(set(_class_folders(held)) - set(classes))
        if unknown:
            raise DataError(f"{held}: class folders not in train/: {', '.join(unknown[:5])}")
        train = [(os.path.join("train", p), lab)
                 for p, lab in _class_images(os.path.join(root, "train"), classes)]
        index = {name: label for label, name in enumerate(classes)}
        test = [(os.path.join(given[0], name, f), index[name])
                for name in _class_folders(held) for f in _images_under(os.path.join(held, name))]
        if not test:
            raise DataError(f"{held}: no images")
        return classes, train, test, f"train/ and {given[0]}/ folders"
    if not top:
        raise DataError(f"--from {root}: expected one sub-folder per class (e.g. cat/, dog/), "
                        "found none")
    if len(top) < 2:
        raise DataError(f"--from {root}: only one class folder ({top[0]}/); a classifier needs "
                        "two or more")
    train, test = held_out(_class_images(root, top), test_fraction)
    if not test:
        raise DataError(f"--from {root}: too few images to hold out a test split "
                        "(give each class two or more images)")
    return top, train, test, f"{test_fraction:g} of each class held out"


def encode_square(task):
    """(JPEG bytes, per-channel [sum, sum of squares] of the RGB pixels, None) or
    (None, None, error): the image's short side resized to `size`, centre-cropped square."""
    import cv2

    path, size, quality = task
    try:
        image = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_COLOR)
    except (OSError, cv2.error) as e:
        return None, None, str(e)
    if image is None:
        return None, None, "not a decodable image"
    rows, cols = image.shape[:2]
    scale = size / min(rows, cols)
    resized = (size, max(size, round(rows * scale))) if cols <= rows else \
        (max(size, round(cols * scale)), size)
    if resized != (cols, rows):
        image = cv2.resize(image, resized,
                           interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
    top, left = (image.shape[0] - size) // 2, (image.shape[1] - size) // 2
    image = np.ascontiguousarray(image[top:top + size, left:left + size])
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        return None, None, "JPEG encoding failed"
    # Statistics of what the reader will decode, not of the pixels before compression.
    rgb = cv2.imdecode(buf, cv2.IMREAD_COLOR)[:, :, ::-1].reshape(-1, 3).astype(np.float64)
    return buf.tobytes(), np.stack([rgb.sum(0), (rgb * rgb).sum(0)]), None


class _Statistics:
    """Running per-channel sums of the training pixels."""

    def __init__(self):
        self.sums, self.pixels = np.zeros((2, 3)), 0

    def add(self, sums, pixels):
        self.sums += sums
        self.pixels += pixels

    def mean_std(self):
        mean = self.sums[0] / self.pixels
        std = np.sqrt(np.maximum(self.sums[1] / self.pixels - mean * mean, 0))
        # A channel without variation (all-grey images) still divides by something sensible.
        std = np.where(std > 1e-3, std, 1.0)
        return [round(float(v), 3) for v in mean], [round(float(v), 3) for v in std]


def _records(root, items, size, quality, workers, statistics=None):
    tasks = [(os.path.join(root, rel), size, quality) for rel, _ in items]
    pool = multiprocessing.get_context("fork").Pool(workers, initializer=_worker_signals)
    try:
        for (rel, label), (image, sums, error) in zip(
            items, pool.imap(encode_square, tasks, chunksize=8)
        ):
            if error is not None:
                raise DataError(f"{os.path.join(root, rel)}: {error}; remove or replace the file")
            if statistics is not None:
                statistics.add(sums, size * size)
            yield label, image, rel
        pool.close()
    finally:
        pool.terminate()
        pool.join()


def build_folder(out_dir, root, size=32, test_fraction=0.2, quality=95, workers=None,
                 force=False):
    """Writes train/test records of the class-per-folder tree `root` to out_dir; returns the
    make_rec.json dict."""
    if not 0 < test_fraction < 1:
        raise DataError(f"--test-fraction must be in (0, 1), got {test_fraction}")
    root = os.path.abspath(root)
    classes, train, test, how = scan_folder(root, test_fraction)
    # Images added, removed or edited since the last build make it another set.
    listing = hashlib.sha256()
    for rel, label in sorted(train + test):
        stat = os.stat(os.path.join(root, rel))
        listing.update(f"{rel}\0{label}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    options = {"from": root, "resize": size, "test_fraction": test_fraction, "quality": quality,
               "images": f"{len(train) + len(test)} files, sha256 {listing.hexdigest()[:16]}"}
    kept = existing_set(out_dir, "folder", options, force)
    if kept:
        return kept
    log(f"{root}: {len(classes)} classes, {len(train)} train and {len(test)} test images ({how})")
    random.Random(SHUFFLE_SEED).shuffle(train)  # readers without an .idx still get mixed batches
    workers = max(1, min(workers or os.cpu_count() or 1, math.ceil(len(train) / 64)))
    statistics = _Statistics()

    def details():
        mean, std = statistics.mean_std()
        return {"class_names": list(classes), "data_shape": [3, size, size],
                "mean_rgb": mean, "std_rgb": std, "split": how}

    return write_dataset(
        out_dir, "folder", options, classes,
        [Split("train", len(train), _records(root, train, size, quality, workers, statistics)),
         Split("test", len(test), _records(root, test, size, quality, workers))],
        details=details)
