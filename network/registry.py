"""The network registry: one entry per `--network` name, each an explicit-keyword builder.

Family modules register their builders with `@register_network(...)`; `network/__init__.py`
imports the families and re-exports the lookup functions. A builder `f(num_classes, ops,
**config)` declares only the keys its layout uses; every network also accepts the op choices
`permutation` and `conv_impl` (options.OP_KEYS, the command lines give them to all), which
`get_symbol` resolves with the device into the one `layers.Ops` handed to the builder.
"""
import inspect
from dataclasses import dataclass
from typing import Callable

from .layers import DEVICES, check_choice, check_runs_on, resolve_ops
from .options import OP_DEFAULTS, OP_KEYS, builder_options

INPUT_SIZES = {"cifar": 32, "imagenet": 224}


@dataclass(frozen=True)
class NetworkEntry:
    name: str
    builder: Callable
    plan: Callable
    dataset_kind: str
    family: str
    description: str

    @property
    def input_size(self):
        return INPUT_SIZES[self.dataset_kind]

    def defaults(self):
        params = inspect.signature(self.builder).parameters
        return {**{key: p.default for key, p in params.items()
                   if key not in ("num_classes", "ops")}, **OP_DEFAULTS}


_REGISTRY = {}


def register_network(name, *, plan, dataset_kind, family, description):
    """Decorator: register `builder(num_classes, ops, **config)` under `name`.

    `plan(**config)` returns the validated stage table the builder follows (used by the summary
    command); it takes the same keywords as the builder, minus `num_classes`.
    """
    if dataset_kind not in INPUT_SIZES:
        raise ValueError(f"dataset_kind must be one of {sorted(INPUT_SIZES)}, got {dataset_kind!r}")

    def decorate(builder):
        if name in _REGISTRY:
            raise ValueError(f"network {name!r} is already registered")
        params = inspect.signature(builder).parameters
        if list(params)[:2] != ["num_classes", "ops"]:
            raise TypeError(f"builder for {name!r} must start with (num_classes, ops)")
        missing = [k for k, p in list(params.items())[2:] if p.default is p.empty]
        if missing:
            raise TypeError(f"builder for {name!r} must give every config key a default: {missing}")
        builder_options(builder)  # every keyword declares its flag
        _REGISTRY[name] = NetworkEntry(name, builder, plan, dataset_kind, family, description)
        return builder

    return decorate


def list_networks():
    """Sorted names of every registered network."""
    return sorted(_REGISTRY)


def _entry(name):
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown network {name!r}; valid names: {', '.join(list_networks())}") \
            from None


def network_defaults(name):
    """{config key: default} for every config key `name` accepts (num_classes excluded)."""
    return _entry(name).defaults()


def network_options(name):
    """{config key: options.ConfigKey} of network `name` (type, help text, choices)."""
    return {**builder_options(_entry(name).builder), **OP_KEYS}


def config_options():
    """{config key: options.ConfigKey} over every registered network: the command-line flags.
    A key's help text and choices are those of its annotation, the same in every builder."""
    keys = {}
    for name in list_networks():
        for key, option in network_options(name).items():
            if keys.setdefault(key, option) != option:
                raise TypeError(f"config key {key!r} is declared differently by {name!r}")
    return keys


def network_info(name):
    """Static facts about a network: input_size, dataset_kind, family, description."""
    entry = _entry(name)
    return {"name": entry.name, "input_size": entry.input_size,
            "dataset_kind": entry.dataset_kind, "family": entry.family,
            "description": entry.description}


def check_config(name, config):
    entry = _entry(name)
    accepted = entry.defaults()
    unknown = sorted(set(config) - set(accepted))
    if unknown:
        raise ValueError(f"network {name!r} does not accept config key(s) {unknown}; "
                         f"accepted keys: {sorted(accepted)}")
    for key, option in network_options(name).items():
        value = config.get(key, accepted[key])
        if option.choices is not None and value is not None and value not in option.choices:
            raise ValueError(f"{key} must be one of {list(option.choices)}, got {value!r}")
    return entry


def get_symbol(name, num_classes, *, device="cpu", **config):
    """Build network `name` ending in SoftmaxOutput 'softmax' (label variable 'softmax_label'),
    for binding on `device` ('cpu' or 'gpu'): only ops with kernels there (layers.runs_on)."""
    entry = check_config(name, config)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    check_choice("device", device, DEVICES)
    full = {**entry.defaults(), **config}
    ops = resolve_ops(full.pop("permutation"), full.pop("conv_impl"), device)
    symbol = entry.builder(num_classes, ops, **full)
    check_runs_on(symbol, device)
    return symbol


def get_plan(name, **config):
    """The validated stage table of `name` under `config`: plan.Stage rows."""
    entry = check_config(name, config)
    full = {**entry.defaults(), **config}
    return entry.plan(**{key: full[key] for key in inspect.signature(entry.plan).parameters})
