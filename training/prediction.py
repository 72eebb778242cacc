"""Classify image files with a Model: decode (JPEG, PNG, any size), the validation preprocessing
the record reader applies (short side resized with bilinear interpolation, centre crop, per-channel
normalisation), one forward pass per chunk, top-k class names."""
import csv
import dataclasses
import glob
import io
import json
import os
import struct

import cv2
import mxnet as mx
import numpy as np

import network
import utility

CHUNK = 32
# An image's pixels, read from its header before decoding: 128 megapixels is 384 MB decoded,
# far above any photograph this classifies, far below what a crafted header can ask for.
MAX_PIXELS = 1 << 27
_JPEG_FRAMES = set(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
FORMATS = ("text", "json", "csv")


class ImageError(ValueError):
    """A path that is not a readable image; the message names it."""


def _images_below(folder):
    found = []
    for parent, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [os.path.join(parent, f) for f in sorted(files)
                  if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith(".")]
    return found


def expand_paths(arguments):
    """The image files the command line names: a file as given, a folder's images (sub-folders
    included, sorted), a glob pattern's matches (one the shell passed on, e.g. quoted). A folder
    without images or a pattern matching nothing stays as given, so that it is reported."""
    paths = []
    for argument in arguments:
        if os.path.isdir(argument):
            paths += _images_below(argument) or [argument]
        elif not os.path.exists(argument) and glob.has_magic(argument):
            paths += sorted(glob.glob(argument, recursive=True)) or [argument]
        else:
            paths.append(argument)
    return paths


def header_size(data):
    """(width, height) from a PNG or JPEG header, None for other formats or a header cut
    short."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        return struct.unpack(">II", data[16:24])
    if data[:2] != b"\xff\xd8":
        return None
    pos = 2
    while pos + 9 <= len(data) and data[pos] == 0xFF:
        marker, length = data[pos + 1], struct.unpack(">H", data[pos + 2:pos + 4])[0]
        if marker in _JPEG_FRAMES:
            height, width = struct.unpack(">HH", data[pos + 5:pos + 9])
            return width, height
        pos += 2 + length
    return None


def read_image(path, warnings=None):
    """(H, W, 3) uint8 RGB of an image file; ImageError naming the file otherwise. What the
    decoder warns about is appended to `warnings`."""
    if os.path.isdir(path):
        raise ImageError(f"{path}: a folder without images ({', '.join(IMAGE_EXTENSIONS)})")
    if not os.path.isfile(path):
        raise ImageError(f"{path}: " + ("no file matches this pattern" if glob.has_magic(path)
                                         else "no such file"))
    try:
        raw = np.fromfile(path, dtype=np.uint8)
    except OSError as err:
        raise ImageError(f"{path}: {err.strerror or err}") from None
    size = header_size(raw[:1 << 16].tobytes())
    if size is not None and size[0] * size[1] > MAX_PIXELS:
        raise ImageError(f"{path}: {size[0]}x{size[1]} pixels, more than the "
                         f"{MAX_PIXELS // 2 ** 20} megapixels this tool decodes; resize it first")
    lines = []
    try:
        with utility.captured_stderr(lines):
            image = cv2.imdecode(raw, cv2.IMREAD_COLOR) if raw.size else None
    except cv2.error as err:
        reason = str(err).strip().splitlines()[-1]
        raise ImageError(f"{path}: OpenCV cannot decode it ({reason})") from None
    if warnings is not None:
        warnings += lines
    if image is None:
        raise ImageError(f"{path}: not an image OpenCV can decode (JPEG, PNG, ...)")
    return image[:, :, ::-1]


def resize_short_side(preprocessing):
    """The short side an image is resized to before the centre crop: the reader's `resize`, else
    the crop size, so that an image of any size is seen whole."""
    _, height, width = preprocessing.data_shape
    return preprocessing.augment.get("resize") or max(height, width)


def preprocess(image, preprocessing):
    """(3, H, W) float32 network input from an RGB image, as the validation reader makes it:
    the short side resized to the reader's `resize` (the crop size when it has none, so that
    an image of any size is seen whole), a centre crop, then (pixel - mean) / std."""
    _, height, width = preprocessing.data_shape
    short = resize_short_side(preprocessing)
    rows, cols = image.shape[:2]
    # ImageRecordIter's integer arithmetic for the resized size.
    size = (short, short * rows // cols) if rows > cols else (short * cols // rows, short)
    if size != (cols, rows):
        image = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
    rows, cols = image.shape[:2]
    top, left = (rows - height) // 2, (cols - width) // 2
    crop = image[top:top + height, left:left + width].astype(np.float32)
    crop = (crop - np.asarray(preprocessing.mean_rgb, np.float32)) / np.asarray(
        preprocessing.std_rgb, np.float32)
    return crop.transpose(2, 0, 1)


@dataclasses.dataclass(frozen=True)
class Prediction:
    path: str
    top: tuple          # ((label, name, probability), ...) best first
    error: str = None   # why the file was not classified (then `top` is empty)
    warnings: tuple = ()  # what the decoder said about the file, each naming it


def predict(model, paths, top_k=5):
    """A Prediction per path, in order; a bad file gets its error and the others still run."""
    names = model.class_names() or [str(i) for i in range(model.num_classes)]
    inputs, results, warnings = {}, {}, {}
    for i, path in enumerate(paths):
        lines = []
        try:
            inputs[i] = preprocess(read_image(path, lines), model.preprocessing)
        except ImageError as err:
            results[i] = Prediction(path, (), str(err))
        warnings[i] = tuple(f"{path}: {line}" for line in lines)
    order = sorted(inputs)
    executor = None
    symbol, arg_params, aux_params = network.optimize_for_inference(
        model.symbol, model.arg_params, model.aux_params,
        device=model.contexts[0].device_type)
    for start in range(0, len(order), CHUNK):
        chunk = order[start:start + CHUNK]
        batch = np.stack([inputs[i] for i in chunk])
        if executor is None or executor.arg_dict["data"].shape[0] != len(chunk):
            executor = symbol.simple_bind(model.contexts[0], grad_req="null", data=batch.shape)
            executor.copy_params_from(arg_params, aux_params)
        probs = executor.forward(is_train=False, data=mx.nd.array(batch))[0].asnumpy()
        for i, row in zip(chunk, probs):
            best = np.argsort(-row, kind="stable")[:top_k]
            results[i] = Prediction(paths[i], tuple((int(c), names[c], float(row[c]))
                                                    for c in best), warnings=warnings[i])
    return [results[i] for i in range(len(paths))]


def format_predictions(results, fmt):
    """The classified images of `results` as text lines, a JSON list or CSV rows (one per image
    and rank); the files that failed are left to the caller's error report."""
    done = [r for r in results if not r.error]
    if fmt == "text":
        return "".join(f"{r.path}: " + ", ".join(f"{name} {100 * p:.1f}%" for _, name, p in r.top)
                       + "\n" for r in done)
    if fmt == "json":
        return json.dumps([{"path": r.path, "top": [
            {"label": label, "class": name, "probability": p} for label, name, p in r.top]}
            for r in done], indent=1) + "\n"
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["path", "rank", "label", "class", "probability"])
    for r in done:
        writer.writerows([r.path, rank, label, name, f"{p:.6f}"]
                         for rank, (label, name, p) in enumerate(r.top, 1))
    return out.getvalue()
