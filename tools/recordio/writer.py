"""Writing a data set: encoded records, .idx/.lst, synsets.txt and make_rec.json, all under
temporary names renamed only once every split succeeded (make_rec.json last, with the size and
SHA-256 of every file, and a marker present while the renames run)."""

import dataclasses
import errno
import hashlib
import json
import os
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PARTIAL = ".partial"
INFO_FILE = "make_rec.json"
# Present while a build's files are renamed into place: a folder holding it may mix two builds
# (training/data.py refuses it, and the next build replaces the set).
SWITCHING = ".make_rec.switching"
PNG_COMPRESSION = 3
SHUFFLE_SEED = 0


class DataError(Exception):
    """A user-facing failure (bad input, wrong checksum, unsafe archive); the message says what
    to do."""


def default_out(dataset):
    return os.path.join(ROOT, "data", dataset)


# ---------------------------------------------------------------------------------------------
# Writing records


def log(message):
    print(message, flush=True)


class Progress:
    """Prints a line at every 10% so long conversions show they are alive without flooding logs;
    work done within QUIET seconds (a small split) gets only its final line."""

    QUIET = 2.0

    def __init__(self, label, total):
        self.label, self.total, self.start, self.next_step = label, total, time.time(), 1

    def update(self, done):
        if done < self.total and time.time() - self.start < self.QUIET:
            return
        if self.total and (done * 10 >= self.next_step * self.total or done == self.total):
            elapsed = time.time() - self.start
            rate = done / elapsed if elapsed > 0 else float("inf")
            eta = (self.total - done) / rate if rate > 0 else 0.0
            log(
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
    progress = Progress(split.name, split.count)
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


def remove_files(paths):
    for path in paths:
        try:
            os.remove(path)
        except FileNotFoundError:
            pass


def file_digest(path):
    """{'size', 'sha256'} of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return {"size": os.path.getsize(path), "sha256": digest.hexdigest()}


def read_info(out_dir):
    """make_rec.json of a complete set in out_dir, or None when the set is missing or incomplete."""
    if os.path.exists(os.path.join(out_dir, SWITCHING)):
        return None
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
        log(
            f"{out_dir}: complete {dataset} records already there "
            f"({', '.join(f'{k} {v}' for k, v in existing['counts'].items())}); --force rebuilds"
        )
        return existing
    raise DataError(
        f"{out_dir} holds {existing.get('dataset')} records built with options "
        f"{existing.get('options')}, not {dataset} with {options}; "
        "pass --force to replace them or choose another --out"
    )


def write_dataset(out_dir, dataset, options, class_names, splits, details=None):
    """Writes all splits, synsets.txt and make_rec.json into out_dir; returns the info dict.
    `details()`, called once every split is written, returns more make_rec.json keys (e.g.
    statistics gathered while writing)."""
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
            log(f"writing {split.name} ({split.count} images) to {out_dir}")
            counts[split.name] = _write_split(out_dir, split, len(class_names))
        info = {
            "dataset": dataset,
            "options": options,
            "classes": len(class_names),
            "counts": counts,
            "files": {
                os.path.basename(t[: -len(PARTIAL)]): file_digest(t) for t in temporaries
            },
            **(details() if details else {}),
        }
        temporaries.append(info_path + PARTIAL)
        with open(info_path + PARTIAL, "w") as f:
            json.dump(info, f, indent=1)
        # The marker goes first, then the old make_rec.json, and the new one comes last: an
        # interruption in between reads as "stopped while switching", never as a finished set
        # of mixed files.
        switching = os.path.join(out_dir, SWITCHING)
        with open(switching, "w") as f:
            f.write(f"{os.getpid()}\n")
            os.fsync(f.fileno())
        remove_files([info_path])
        for temporary in temporaries:
            os.replace(temporary, temporary[: -len(PARTIAL)])
        os.remove(switching)
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise DataError(
                f"no space left on the device holding {out_dir}; partial files removed"
            ) from None
        raise DataError(
            f"cannot write {e.filename or out_dir}: {e.strerror or e}; partial files removed"
        ) from None
    finally:
        remove_files(temporaries)
    log(f"done: {out_dir} ({', '.join(f'{k} {v}' for k, v in counts.items())})")
    return info


# ---------------------------------------------------------------------------------------------
# Inputs: checksums, downloads, archives
