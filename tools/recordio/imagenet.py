"""ILSVRC2012 from extracted train/ and val/ folders: resized to a short side, JPEG-encoded
by worker processes."""

import contextlib
import multiprocessing
import os
import random
import signal
import sys
import tempfile

import numpy as np

from .writer import SHUFFLE_SEED, DataError, Split, existing_set, log, write_dataset

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


@contextlib.contextmanager
def _captured_stderr(lines):
    """What the decoder prints on file descriptor 2 during the block, into `lines` (libjpeg's
    warnings name no file). utility.captured_stderr's twin: tools/ runs without the project's
    modules (make_rec.sh in a bare clone)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            lines += [line.decode(errors="replace").strip() for line in captured
                      if line.strip()]


def encode_imagenet_image(task):
    """(bytes, None, warnings) or (None, error, warnings): the image at path, short side resized,
    re-encoded as JPEG; warnings are what the decoder printed (e.g. "Corrupt JPEG data")."""
    import cv2

    path, short_side, quality = task
    warnings = []
    try:
        with _captured_stderr(warnings):
            image = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_COLOR)
    except (OSError, cv2.error) as e:
        return None, str(e), warnings
    if image is None:
        return None, "not a decodable image", warnings
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
    return (buf.tobytes(), None, warnings) if ok else (None, "JPEG encoding failed", warnings)


def _imagenet_records(root, items, short_side, quality, workers):
    tasks = [(os.path.join(root, rel), short_side, quality) for rel, _ in items]
    pool = multiprocessing.get_context("fork").Pool(workers, initializer=_worker_signals)
    try:
        for (rel, label), (image, error, warnings) in zip(
            items, pool.imap(encode_imagenet_image, tasks, chunksize=8)
        ):
            for warning in warnings:
                print(f"warning: {os.path.join(root, rel)}: {warning}", file=sys.stderr)
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
    log(f"scanning {root}")
    synsets, train, val = scan_imagenet(root, val_labels)
    log(f"found {len(synsets)} classes, {len(train)} train and {len(val)} val images")
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
