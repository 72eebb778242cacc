"""The schema of PREFIX-model.json: what a checkpoint's model is (network, config, classes,
input, data and validation preprocessing). Tools trust nothing in it that this check has not
seen: a bad file is one ConfigError naming the file and the key."""
import math

import network

from . import recipes
from .errors import ConfigError
from .folder import DATASET as FOLDER

DATASETS = tuple(sorted(recipes.CIFAR_DATASETS)) + ("imagenet", FOLDER)
# The ImageRecordIter keywords a validation reader may take: the image transforms of the
# recipes (none of them names a file).
AUGMENT_KEYS = frozenset(
    key for table in (recipes.IMAGENET_VAL_AUGMENTS, recipes.IMAGENET_TRAIN_AUGMENTS)
    for augment in table.values() for key in augment) | {"resize"}


def _number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and \
        math.isfinite(value)


def _positive_int(value):
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _rgb(check):
    return lambda v: isinstance(v, list) and len(v) == 3 and all(map(check, v))


def _config_value(option, value):
    """Whether `value` is valid for a network config key (its annotated kind and choices)."""
    if option.kind is bool:
        valid = isinstance(value, bool)
    elif option.kind is int:
        valid = _positive_int(value)
    elif option.kind is float:
        valid = _number(value) and value > 0
    else:
        valid = isinstance(value, option.kind)
    return valid and (option.choices is None or value in option.choices)


FIELDS = {
    "network": (lambda v: isinstance(v, str) and v in network.list_networks(),
                "a registered network name (python -m network --list)"),
    "config": (lambda v: isinstance(v, dict), "an object of network config keys"),
    "num_classes": (_positive_int, "a positive integer"),
    "data_shape": (lambda v: isinstance(v, list) and len(v) == 3 and v[0] == 3 and
                   all(map(_positive_int, v)), "[3, height, width] of positive integers"),
    "dataset": (lambda v: v in DATASETS, f"one of {', '.join(DATASETS)}"),
    "data_dir": (lambda v: isinstance(v, str) and v != "", "a folder path"),
    "mean_rgb": (_rgb(_number), "three finite numbers"),
    "std_rgb": (_rgb(lambda x: _number(x) and x > 0), "three finite numbers > 0"),
    "val_augment": (lambda v: isinstance(v, dict), "an object of reader keywords"),
}


def validate_model_info(info, path):
    """`info` (PREFIX-model.json as loaded) when it fits the schema; ConfigError naming `path`
    and the first key that does not."""
    if not isinstance(info, dict):
        raise ConfigError(f"{path}: not a model description (a JSON object is expected)")
    for key in info:
        if key not in FIELDS:
            raise ConfigError(f"{path}: unknown key {key!r} (known: {', '.join(FIELDS)})")
    for key, (valid, expected) in FIELDS.items():
        if key not in info:
            raise ConfigError(f"{path}: key {key!r} is missing")
        if not valid(info[key]):
            raise ConfigError(f"{path}: key {key!r} must be {expected}, got {info[key]!r}")
    options = network.network_options(info["network"])
    for key, value in info["config"].items():
        if key not in options:
            raise ConfigError(f"{path}: key 'config.{key}' is not a config key of "
                              f"{info['network']} (its keys: {', '.join(options)})")
        if not _config_value(options[key], value):
            raise ConfigError(f"{path}: key 'config.{key}' has an invalid value {value!r}")
    for key, value in info["val_augment"].items():
        if key not in AUGMENT_KEYS:
            raise ConfigError(f"{path}: key 'val_augment.{key}' is not a reader keyword of "
                              f"the recipes ({', '.join(sorted(AUGMENT_KEYS))})")
        if not (isinstance(value, bool) or _number(value)):
            raise ConfigError(f"{path}: key 'val_augment.{key}' must be a number or "
                              f"true/false, got {value!r}")
    size = network.network_info(info["network"])["input_size"]
    # A folder set is trained at the size of its images (any size a network can pool down).
    if info["dataset"] != FOLDER and info["data_shape"] != [3, size, size]:
        raise ConfigError(f"{path}: key 'data_shape' is {info['data_shape']}, but network "
                          f"{info['network']} takes [3, {size}, {size}]")
    return info
