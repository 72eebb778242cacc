"""Records of the user's own images (`tools/make_rec.sh folder`): their make_rec.json holds what
the CIFAR presets hard-code (classes, image size, mean/std of the training images), so
`train_model.py --dataset folder --data-dir OUT` reads its defaults from there."""
import dataclasses
import json
import math
import os

from .data import MAKE_REC_INFO
from .errors import ConfigError
from .recipes import Preprocessing

DATASET = "folder"
BATCH_SIZE = 64
TEST_BATCH_SIZE = 200
NUM_EPOCHS = 30


@dataclasses.dataclass(frozen=True)
class FolderSet:
    class_names: tuple
    image_size: int
    mean_rgb: tuple
    std_rgb: tuple
    counts: dict              # {split: records}


def _triple(info, key, path, positive=False):
    value = info.get(key)
    if not (isinstance(value, list) and len(value) == 3 and
            all(isinstance(v, (int, float)) and math.isfinite(v) and (v > 0 or not positive)
                for v in value)):
        raise ConfigError(f"{path}: {key!r} should be three finite numbers, got {value!r}; "
                          "rebuild with tools/make_rec.sh folder --force")
    return tuple(float(v) for v in value)


def read_folder_set(data_dir):
    """The FolderSet described by data_dir/make_rec.json; ConfigError naming what is wrong."""
    if data_dir is None:
        raise ConfigError("--dataset folder needs --data-dir OUT, the folder written by "
                          "tools/make_rec.sh folder --from DIR --out OUT")
    path = os.path.join(data_dir, MAKE_REC_INFO)
    try:
        with open(path) as f:
            info = json.load(f)
    except FileNotFoundError:
        raise ConfigError(f"--data-dir: {path} not found; make the records with "
                          f"tools/make_rec.sh folder --from DIR --out {data_dir}") from None
    except (OSError, ValueError) as err:
        raise ConfigError(f"--data-dir: cannot read {path} ({err})") from None
    if not isinstance(info, dict) or info.get("dataset") != DATASET:
        kind = info.get("dataset") if isinstance(info, dict) else None
        raise ConfigError(f"--data-dir: {path} describes {kind!r} records, not a folder set "
                          f"(use --dataset {kind})" if kind else
                          f"--data-dir: {path} is not a tools/make_rec.sh folder description")
    names, shape = info.get("class_names"), info.get("data_shape")
    if not (isinstance(names, list) and len(names) >= 2 and all(isinstance(n, str) for n in names)):
        raise ConfigError(f"{path}: 'class_names' should list two or more names, got {names!r}")
    if not (isinstance(shape, list) and len(shape) == 3 and shape[0] == 3 and
            shape[1] == shape[2] and isinstance(shape[1], int) and shape[1] > 0):
        raise ConfigError(f"{path}: 'data_shape' should be [3, S, S], got {shape!r}")
    counts = info.get("counts")
    if not isinstance(counts, dict) or not all(isinstance(counts.get(k), int)
                                               for k in ("train", "test")):
        raise ConfigError(f"{path}: 'counts' should give the train and test records, "
                          f"got {counts!r}")
    return FolderSet(tuple(names), shape[1], _triple(info, "mean_rgb", path),
                     _triple(info, "std_rgb", path, positive=True), dict(counts))


def folder_presets(folder_set):
    """train_model.py defaults for a folder set (any flag on the command line wins)."""
    return dict(num_classes=len(folder_set.class_names), mean_rgb=folder_set.mean_rgb,
                std_rgb=folder_set.std_rgb, num_epochs=NUM_EPOCHS,
                batch_size=min(BATCH_SIZE, folder_set.counts["train"]),
                test_batch_size=min(TEST_BATCH_SIZE, folder_set.counts["test"]), augment=True)


def folder_augmentation(augment, image_size):
    """The CIFAR recipe scaled to the image: pad by 1/8 of the side, random crop, mirror."""
    if not augment:
        return {}
    return dict(pad=max(1, image_size // 8), rand_crop=True, rand_mirror=True)


def folder_preprocessing(folder_set):
    """The validation preprocessing of a folder set: the stored square image, normalised."""
    size = folder_set.image_size
    return Preprocessing(folder_set.mean_rgb, folder_set.std_rgb, (3, size, size), {})
