"""Record files: label checks before training, and the ImageRecordIter readers of a run."""
import contextlib
import dataclasses
import json
import os
import re
import struct
import sys
import tempfile

import mxnet as mx
import numpy as np

from .errors import ConfigError

_RECORDIO_MAGIC = 0xced7230a
PRECISE_BN_SEED = 1_000_003  # the --precise-bn readers' seed offset from the epochs' seeds
MAKE_REC_INFO = "make_rec.json"
_IR_HEADER = struct.Struct("<IfQQ")  # flag, label, id, id2
# MXNet logs this at every reader it creates; no environment switch silences it.
_READER_CHATTER = re.compile(
    rb"^\[[\d:]+\] \S+iter_image_recordio_2\.cc:\d+: ImageRecordIOParser2: ")


@dataclasses.dataclass(frozen=True)
class RecordFile:
    rec: str
    idx: str
    num_records: int
    num_classes_seen: int


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


def built_counts(data_dir):
    """{split: records} from the make_rec.json that tools/make_rec.sh writes beside the
    records ({} when there is none, e.g. records made by other tools)."""
    try:
        with open(os.path.join(data_dir, MAKE_REC_INFO)) as f:
            counts = json.load(f).get("counts", {})
    except (OSError, ValueError, AttributeError):
        return {}
    return {k: v for k, v in counts.items() if isinstance(v, int)} \
        if isinstance(counts, dict) else {}


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
    return RecordFile(rec, idx, int(labels.size), int(np.unique(labels).size))


@contextlib.contextmanager
def _without_reader_chatter():
    """Run the block with file descriptor 2 captured, then pass on everything but MXNet's
    per-reader line (its errors reach Python as exceptions, its other output stays visible)."""
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
            for line in captured:
                if not _READER_CHATTER.match(line):
                    os.write(2, line)


def record_iter(record, batch_size, data_shape, mean, std, augment, *, threads=1, shuffle=False,
                seed=0, num_parts=1, part_index=0):
    """An ImageRecordIter that really normalises: (pixel - mean) / std per channel through
    mean_*/std_* (the authors' scale_*/fill_value_* keywords were silently ignored by MXNet),
    with padding filled by the mean grey (unless `augment` names its fill_value) so padded
    pixels are about 0 after normalisation.
    num_parts/part_index: this worker's share, split by record count (the .idx is used).
    `seed` drives the shuffle and, through seed_aug, the crops and flips (left unset, MXNet
    seeds them with a constant, so every reader would repeat the same augmentation draws)."""
    keywords = dict(
        path_imgrec=record.rec, path_imgidx=record.idx, data_shape=data_shape,
        batch_size=batch_size, label_width=1, shuffle=shuffle, seed=seed, seed_aug=seed,
        num_parts=num_parts, part_index=part_index, preprocess_threads=threads,
        mean_r=mean[0], mean_g=mean[1], mean_b=mean[2],
        std_r=std[0], std_g=std[1], std_b=std[2],
        fill_value=int(round(sum(mean) / 3)))
    keywords.update(augment)  # a recipe's own fill_value wins over the mean grey
    with _without_reader_chatter():
        return mx.io.ImageRecordIter(**keywords)


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
                         seed=job.run.seed + epoch, num_parts=num_parts, part_index=part_index)
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
                       seed=job.run.seed + epoch + PRECISE_BN_SEED, num_parts=num_parts,
                       part_index=part_index)
