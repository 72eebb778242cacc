"""Network config keys as annotated builder keywords: the one place their flags come from.

A builder declares each config keyword with a type from here (or its own `Annotated[...,
Option(...)]`), e.g. `depth: Depth = 20`. The registry refuses a keyword without one, and the
command lines (`train_model.py`, `train_imagenet.py`, `python -m network`) derive the flag, its
parser, its choices and its help text from the annotation, so a new keyword needs no second list.
"""
import argparse
import inspect
import math
import typing
from dataclasses import dataclass
from typing import Annotated

from .layers import CONV_IMPLS, PERMUTATIONS


@dataclass(frozen=True)
class Option:
    """help: the flag's help text; choices: the valid values (None: any); tag: how the value
    is written in a run's directory name ('d' -> d38; '' -> the value alone)."""
    help: str
    choices: tuple = None
    tag: str = None


def _int_at_least(low, what):
    def convert(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value
    return convert


positive_int = _int_at_least(1, "a positive integer")
non_negative_int = _int_at_least(0, "an integer >= 0")


def positive_float(text):
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive finite number, got {text!r}")
    return value


def boolean(text):
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


_PARSERS = {int: positive_int, float: positive_float, bool: boolean, str: str}


@dataclass(frozen=True)
class ConfigKey:
    """A config keyword as a command line sees it."""
    key: str
    kind: type
    help: str
    choices: tuple
    tag: str

    @property
    def flag(self):
        return "--" + self.key.replace("_", "-")

    def parse(self, text):
        return _PARSERS[self.kind](text)


def builder_options(builder):
    """{key: ConfigKey} for every config keyword of `builder`; TypeError for one without an
    `Annotated[type, Option(...)]` annotation."""
    hints = typing.get_type_hints(builder, include_extras=True)
    keys = {}
    for key in inspect.signature(builder).parameters:
        if key in ("num_classes", "ops"):
            continue
        hint = hints.get(key)
        options = [m for m in getattr(hint, "__metadata__", ()) if isinstance(m, Option)]
        kind = typing.get_args(hint)[0] if options else None
        if typing.get_origin(kind) is typing.Union:  # Optional[int]: the value type
            kind = next(t for t in typing.get_args(kind) if t is not type(None))
        if not options or kind not in _PARSERS:
            raise TypeError(f"{builder.__name__}: config keyword {key!r} needs an annotation "
                            "Annotated[int|float|bool|str, Option(help, choices)]")
        option = options[0]
        keys[key] = ConfigKey(key, kind, option.help, option.choices,
                              key if option.tag is None else option.tag)
    return keys


Depth = Annotated[int, Option("network depth (CIFAR networks)", tag="d")]
Width = Annotated[int, Option("stage-1 width of plain / resnet networks", tag="w")]
PrimaryPartition = Annotated[int, Option("L: groups of the primary (spatial) group convolution",
                                         tag="L")]
SecondaryPartition = Annotated[int, Option(
    "M: groups of the secondary (1x1) group convolution in the first stage", tag="M")]
WidthMultiplier = Annotated[float, Option(
    "width multiplier; widths rounded to even numbers (IGCV2, IGCV3, MobileNetV2)", tag="x")]
DepthMultiplier = Annotated[float, Option("block-count multiplier (igcv3_cifar: 1.0, 0.7, 0.5)",
                                           tag="dx")]
T1Expansion = Annotated[bool, Option(
    "keep the t=1 expansion conv (MobileNetV2, as the authors did)", tag="t1")]
# The op choices every network accepts (see registry.get_symbol), with their defaults.
OP_KEYS = {
    "permutation": ConfigKey(
        "permutation", str, "channel permutation: the native Reorder op or "
        "reshape-swapaxes-reshape", PERMUTATIONS, ""),
    "conv_impl": ConfigKey(
        "conv_impl", str, "convolutions and BatchNorm: auto (with the native permutation: "
        "IGCConv for narrow groups, depthwise and 1x1 convs, and the plugin's BatchNorm), mxnet "
        "(MXNet's ops) or igc (the plugin's everywhere)", CONV_IMPLS, ""),
}
OP_DEFAULTS = {"permutation": "reorder", "conv_impl": "auto"}
