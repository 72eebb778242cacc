"""Record files: label checks before training, and the ImageRecordIter readers of a run."""
import contextlib
import dataclasses
import hashlib
import json
import os
import re
import struct
import sys

import mxnet as mx
import numpy as np

import utility

from .errors import ConfigError

_RECORDIO_MAGIC = 0xced7230a
PRECISE_BN_STREAM = 1  # the --precise-bn readers' stream key beside (seed, epoch)
MAKE_REC_INFO = "make_rec.json"
# Present only while tools/make_rec.sh renames a new build into place.
MAKE_REC_SWITCHING = ".make_rec.switching"
_IR_HEADER = struct.Struct("<IfQQ")  # flag, label, id, id2
# MXNet logs this at every reader it creates; no environment switch silences it.
_READER_CHATTER = re.compile(
    r"^\[[\d:]+\] \S+iter_image_recordio_2\.cc:\d+: ImageRecordIOParser2: ")


@dataclasses.dataclass(frozen=True)
class RecordFile:
    rec: str
    idx: str
    num_records: int
    num_classes_seen: int
    identity: dict = None    # what the records are, wherever they lie (see record_identity)


def read_labels(rec_path, idx_path):
    """Labels of every record, read from the record headers the index points at (no decoding)."""
    offsets = []
    with open(idx_path) as index:
        for line_no, line in enumerate(index, 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 2 or not fields[1].isdigit():
                raise ConfigError(f"{idx_path}:{line_no}: expected 'key offset', "
                                  f"got {line.strip()!r}")
            offsets.append(int(fields[1]))
    offsets.sort()
    labels = np.empty(len(offsets), dtype=np.float64)
    size = os.path.getsize(rec_path)
    with open(rec_path, "rb") as rec:
        for i, offset in enumerate(offsets):
            rec.seek(offset)
            head = rec.read(8 + _IR_HEADER.size)
            if len(head) < 8 + _IR_HEADER.size or offset >= size:
                raise ConfigError(f"{rec_path}: record at offset {offset} (from {idx_path}) is "
                                  "truncated; the .rec and .idx do not match")
            magic, _ = struct.unpack("<II", head[:8])
            if magic != _RECORDIO_MAGIC:
                raise ConfigError(f"{rec_path}: no record at offset {offset} (from {idx_path}); "
                                  "the .rec and .idx do not match")
            flag, label, _, _ = _IR_HEADER.unpack(head[8:])
            if flag != 0:
                raise ConfigError(f"{rec_path}: record at offset {offset} has {flag} labels; "
                                  "classification needs one label per image")
            labels[i] = label
    return labels


def read_build_info(data_dir):
    """The make_rec.json that tools/make_rec.sh writes beside the records ({} when there is
    none, e.g. records made by other tools); ConfigError when make_rec.sh was stopped while it
    replaced the files (its marker is still there: the folder may mix two builds)."""
    marker = os.path.join(data_dir, MAKE_REC_SWITCHING)
    if os.path.exists(marker):
        raise ConfigError(f"{marker} exists: tools/make_rec.sh was stopped while it replaced "
                          f"the records in {data_dir}, which may mix two builds (rebuild with "
                          "tools/make_rec.sh ... --force)")
    try:
        with open(os.path.join(data_dir, MAKE_REC_INFO), "rb") as f:
            info = json.loads(f.read().decode())
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def built_counts(data_dir):
    """{split: records} from make_rec.json ({} without one)."""
    counts = read_build_info(data_dir).get("counts", {})
    return {k: v for k, v in counts.items() if isinstance(v, int)} \
        if isinstance(counts, dict) else {}


def _built_files(data_dir, name):
    """{file name: {'size', 'sha256'}} that make_rec.json records for split `name`."""
    files = read_build_info(data_dir).get("files", {})
    return {k: v for k, v in files.items() if k.startswith(name + ".") and isinstance(v, dict)} \
        if isinstance(files, dict) else {}


def record_identity(rec, idx, labels, built):
    """What a record set is, by content rather than path, for --resume to compare: its size,
    the digests of its index and labels, and make_rec.json's digest of the .rec when it has
    one (a whole .rec is too large to hash at every start)."""
    identity = {"records": int(labels.size), "rec_bytes": os.path.getsize(rec),
                "idx_sha256": utility.file_sha256(idx),
                "labels_sha256": hashlib.sha256(labels.tobytes()).hexdigest()}
    rec_digest = built.get(os.path.basename(rec), {}).get("sha256")
    if rec_digest:
        identity["rec_sha256"] = rec_digest
    return identity


def check_record_file(data_dir, name, num_classes, flag="--data-dir"):
    """A record set `name`.rec/.idx in `data_dir` that exists, is not empty, and whose labels
    are integers in [0, num_classes)."""
    rec = os.path.join(data_dir, name + ".rec")
    idx = os.path.join(data_dir, name + ".idx")
    for path in (rec, idx):
        if not os.path.isfile(path):
            raise ConfigError(f"{flag}: {path} not found (tools/make_rec.sh writes "
                              f"{name}.rec and {name}.idx)")
    if os.path.getsize(rec) == 0 or os.path.getsize(idx) == 0:
        raise ConfigError(f"{flag}: {rec if os.path.getsize(rec) == 0 else idx} is empty")
    built_files = _built_files(data_dir, name)
    for path in (rec, idx):
        size = built_files.get(os.path.basename(path), {}).get("size")
        if size is not None and size != os.path.getsize(path):
            raise ConfigError(f"{path} has {os.path.getsize(path)} bytes but {MAKE_REC_INFO} "
                              f"says {size}: the files are from another build (rebuild with "
                              "tools/make_rec.sh ... --force)")
    labels = read_labels(rec, idx)
    if labels.size == 0:
        raise ConfigError(f"{flag}: {idx} lists no records")
    built = built_counts(data_dir).get(name)
    if built is not None and built != labels.size:
        raise ConfigError(f"{idx} lists {labels.size} records but {MAKE_REC_INFO} says {name} "
                          f"has {built}: the index is cut short or from another build "
                          "(rebuild with tools/make_rec.sh ... --force)")
    bad = (labels != np.round(labels)) | (labels < 0) | (labels >= num_classes)
    if bad.any():
        first = labels[bad][0]
        raise ConfigError(f"{rec}: {int(bad.sum())} label(s) outside 0..{num_classes - 1} "
                          f"(first: {first:g}); --num-classes is {num_classes}")
    return RecordFile(rec, idx, int(labels.size), int(np.unique(labels).size),
                      record_identity(rec, idx, labels, built_files))


def dataset_classes(data_dir):
    """(classes, where that number comes from) of the data set in `data_dir`: make_rec.json's
    'classes', else the lines of synsets.txt; (None, None) when neither says."""
    classes = read_build_info(data_dir).get("classes")
    if isinstance(classes, int) and not isinstance(classes, bool):
        return classes, os.path.join(data_dir, MAKE_REC_INFO)
    synsets = os.path.join(data_dir, "synsets.txt")
    if os.path.isfile(synsets):
        with open(synsets, "rb") as f:
            return sum(1 for line in f if line.strip()), synsets
    return None, None


def first_image_shape(record):
    """(height, width) of the first stored image of a RecordFile (None when it cannot be
    decoded: the reader reports that). Decoded by MXNet's own OpenCV, as the reader does."""
    reader = mx.recordio.MXIndexedRecordIO(record.idx, record.rec, "r")
    try:
        _, image = mx.recordio.unpack(reader.read_idx(reader.keys[0]))
    finally:
        reader.close()
    try:
        return tuple(mx.image.imdecode(image).shape[:2])
    except mx.MXNetError:
        return None


@contextlib.contextmanager
def _without_reader_chatter():
    """Run the block with file descriptor 2 captured, then pass on everything but MXNet's
    per-reader line (its errors reach Python as exceptions, its other output stays visible)."""
    lines = []
    try:
        with utility.captured_stderr(lines):
            yield
    finally:
        for line in lines:
            if not _READER_CHATTER.match(line):
                sys.stderr.write(line + "\n")


def stream_seed(*keys):
    """A seed in [0, 2**31) for the stream named by integer `keys` (run seed, epoch, ...):
    different keys give unrelated streams, where seed + epoch would make run s's epoch 1 repeat
    run s+1's epoch 0."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1)[0] >> 1)


# ImageRecordIter keywords of the CIFAR augmentation, which CropFlipBatches draws itself.
_CROP_FLIP = frozenset(("pad", "rand_crop", "rand_mirror"))


class CropFlipBatches:
    """The batches of an ImageRecordIter that pads each image by `pad` (with the reader's fill
    value, then normalised) and crops nothing, cropped here at a random offset to data_shape
    and mirrored with probability 1/2, each image its own independent draw.

    ImageRecordIter cannot do this reproducibly: with seed_aug set, MXNet 1.9 reseeds its
    generator before every image with seed_aug + the image's position in its batch
    (src/io/iter_image_recordio_2.cc, ParseChunk), so every batch of a reader repeats the same
    batch_size crops and flips, and readers seeded s and s + 1 repeat them shifted by one place
    (docs/reproduce.md shows what that did to training); without seed_aug each thread's
    generator starts from a constant, so every reader repeats one sequence, in an order that
    depends on thread timing."""

    def __init__(self, reader, data_shape, pad, crop, mirror, rng):
        self.reader, self.pad, self.crop, self.mirror, self.rng = reader, pad, crop, mirror, rng
        self.height, self.width = data_shape[1], data_shape[2]

    def __iter__(self):
        rows, cols = np.arange(self.height), np.arange(self.width)
        for batch in self.reader:
            padded = batch.data[0].asnumpy()
            n = padded.shape[0]
            if self.crop:
                top = self.rng.integers(0, 2 * self.pad + 1, n)
                left = self.rng.integers(0, 2 * self.pad + 1, n)
            else:
                top = left = np.full(n, self.pad)
            flip = self.rng.integers(0, 2, n).astype(bool) if self.mirror else np.zeros(n, bool)
            y = (top[:, None] + rows)[:, None, :, None]
            x = np.where(flip[:, None], left[:, None] + cols[::-1], left[:, None] + cols)
            images = padded[np.arange(n)[:, None, None, None],
                            np.arange(padded.shape[1])[None, :, None, None], y,
                            x[:, None, None, :]]
            yield mx.io.DataBatch([mx.nd.array(images, dtype=padded.dtype)], batch.label,
                                  pad=batch.pad)


def record_iter(record, batch_size, data_shape, mean, std, augment, *, threads=1, shuffle=False,
                seed=(0,), num_parts=1, part_index=0):
    """An ImageRecordIter that really normalises: (pixel - mean) / std per channel through
    mean_*/std_* (the authors' scale_*/fill_value_* keywords were silently ignored by MXNet),
    with padding filled by the mean grey (unless `augment` names its fill_value) so padded
    pixels are about 0 after normalisation.
    num_parts/part_index: this worker's share, split by record count (the .idx is used).
    `seed` (a tuple of ints, see stream_seed) drives the shuffle and the random augmentation.
    The CIFAR augmentation (pad, rand_crop, rand_mirror and nothing else, on images stored at
    data_shape) is drawn per image by CropFlipBatches; any other augmentation is ImageRecordIter's
    own, with seed_aug spaced so that no two readers share draws (within one reader, the images
    at one batch position share them: MXNet's seeding, see CropFlipBatches)."""
    keys = tuple(seed) if isinstance(seed, (tuple, list)) else (seed,)
    keywords = dict(
        path_imgrec=record.rec, path_imgidx=record.idx, data_shape=data_shape,
        batch_size=batch_size, label_width=1, shuffle=shuffle, seed=stream_seed(*keys),
        num_parts=num_parts, part_index=part_index, preprocess_threads=threads,
        mean_r=mean[0], mean_g=mean[1], mean_b=mean[2],
        std_r=std[0], std_g=std[1], std_b=std[2],
        fill_value=int(round(sum(mean) / 3)))
    keywords.update(augment)  # a recipe's own fill_value wins over the mean grey
    crop_flip = _crop_flip_here(record, data_shape, augment)
    pad = int(augment.get("pad", 0))
    if crop_flip:
        for key in _CROP_FLIP:
            keywords.pop(key, None)
        keywords.update(pad=pad, data_shape=(data_shape[0], data_shape[1] + 2 * pad,
                                              data_shape[2] + 2 * pad))
    else:
        # MXNet seeds image k of a batch with seed_aug + k (+ 111): windows batch_size apart.
        windows = (2 ** 31 - 256) // batch_size - 1
        keywords["seed_aug"] = stream_seed(*keys, part_index, 1) % windows * batch_size
    with _without_reader_chatter():
        reader = mx.io.ImageRecordIter(**keywords)
    if not crop_flip:
        return reader
    return CropFlipBatches(reader, data_shape, pad, bool(augment.get("rand_crop")),
                           bool(augment.get("rand_mirror")),
                           np.random.default_rng([*keys, part_index, 2]))


def _crop_flip_here(record, data_shape, augment):
    """Whether `augment` is the CIFAR augmentation on images stored at data_shape (so that
    padding, then cropping data_shape at a random offset, is all that ImageRecordIter would do)."""
    if not (augment.get("rand_crop") or augment.get("rand_mirror")):
        return False
    if not set(augment) <= _CROP_FLIP | {"fill_value"}:
        return False
    return first_image_shape(record) == tuple(data_shape[1:])


def val_iter(job):
    """The validation reader of `job` (whole set, no shuffle, the family's preprocessing)."""
    data = job.data
    return record_iter(data.val, data.test_batch_size, job.network.data_shape, data.mean_rgb,
                       data.std_rgb, data.val_augment, threads=data.threads)


def train_batches(job, epoch, steps, num_parts=1, part_index=0):
    """The batches of one training epoch. A fresh reader per epoch, seeded by (seed, epoch), so
    the data order and augmentation of epoch e are the same whether or not the run was resumed;
    exactly `steps` batches, so every dist_sync worker does the same number of updates."""
    data = job.data
    reader = record_iter(data.train, data.batch_size, job.network.data_shape, data.mean_rgb,
                         data.std_rgb, data.train_augment, threads=data.threads, shuffle=True,
                         seed=(job.run.seed, epoch), num_parts=num_parts, part_index=part_index)
    for step, batch in enumerate(reader):
        if step == steps:
            break
        yield batch


def precise_bn_batches(job, epoch, num_parts=1, part_index=0):
    """Training batches for `--precise-bn` after `epoch`: the training reader (augmentation
    included), seeded apart from every epoch's own order."""
    data = job.data
    return record_iter(data.train, data.batch_size, job.network.data_shape, data.mean_rgb,
                       data.std_rgb, data.train_augment, threads=data.threads, shuffle=True,
                       seed=(job.run.seed, epoch, PRECISE_BN_STREAM), num_parts=num_parts,
                       part_index=part_index)
