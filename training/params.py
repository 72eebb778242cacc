"""Parameter files by name: read one (ours, the authors' or Gluon's), match it against a graph,
and say in one line what is missing, unexpected or of another shape."""
import dataclasses

import mxnet as mx

from .errors import ConfigError, mxnet_reason

INPUT_NAMES = ("data", "softmax_label")


def read_params(path, flag="--params"):
    """{name: NDArray} of `path` with its 'arg:'/'aux:' prefixes kept when present (as
    mx.model.save_checkpoint writes them); ConfigError naming the file when it is unreadable."""
    try:
        blob = mx.nd.load(path)
    except mx.base.MXNetError as err:
        raise ConfigError(f"{flag} {path}: not a readable MXNet parameter file "
                          f"({mxnet_reason(err)})") from None
    except OSError as err:
        raise ConfigError(f"{flag} {path}: {err.strerror or err}") from None
    if not isinstance(blob, dict) or not blob:
        raise ConfigError(f"{flag} {path}: holds no named arrays")
    return blob


def split_params(blob, symbol):
    """(arg_params, aux_params) of a loaded file. Unprefixed names (Gluon's save_parameters) are
    sorted into auxiliary states or arguments by the graph's own lists."""
    aux_names = set(symbol.list_auxiliary_states())
    arg_params, aux_params = {}, {}
    for key, value in blob.items():
        if key.startswith("arg:"):
            arg_params[key[4:]] = value
        elif key.startswith("aux:"):
            aux_params[key[4:]] = value
        elif key in aux_names:
            aux_params[key] = value
        else:
            arg_params[key] = value
    return arg_params, aux_params


def expected_shapes(symbol, data_shape):
    """({argument: shape}, {aux state: shape}) of the learnable arrays for input `data_shape`."""
    arg_shapes, _, aux_shapes = symbol.infer_shape(data=tuple(data_shape))
    if arg_shapes is None:
        raise ConfigError(f"cannot infer the graph's shapes for input {tuple(data_shape)}")
    args = {n: tuple(s) for n, s in zip(symbol.list_arguments(), arg_shapes)
            if n not in INPUT_NAMES}
    aux = {n: tuple(s) for n, s in zip(symbol.list_auxiliary_states(), aux_shapes)}
    return args, aux


@dataclasses.dataclass(frozen=True)
class Match:
    """How a parameter file lines up with a graph, by name and shape."""
    arg_params: dict     # the file's arrays the graph takes (name and shape equal)
    aux_params: dict
    missing: tuple       # names the graph needs that the file lacks
    mismatched: tuple    # (name, file shape, graph shape): same name, other shape
    unused: tuple        # names in the file the graph does not have

    @property
    def loaded(self):
        return tuple(sorted(self.arg_params)) + tuple(sorted(self.aux_params))

    @property
    def complete(self):
        return not (self.missing or self.mismatched or self.unused)

    def problems(self, limit=6):
        """One line: what keeps the file from loading exactly (empty when nothing does)."""
        parts = []
        for label, items in (("missing", self.missing), ("unexpected", self.unused)):
            if items:
                shown = ", ".join(items[:limit]) + (", ..." if len(items) > limit else "")
                parts.append(f"{len(items)} {label} ({shown})")
        if self.mismatched:
            shown = ", ".join(f"{n} file {f} vs network {g}" for n, f, g in self.mismatched[:limit])
            parts.append(f"{len(self.mismatched)} of another shape ({shown}"
                         f"{', ...' if len(self.mismatched) > limit else ''})")
        return "; ".join(parts)


def match_params(symbol, data_shape, arg_params, aux_params):
    """Match loaded arrays against `symbol`'s learnable arguments and auxiliary states."""
    want_args, want_aux = expected_shapes(symbol, data_shape)
    taken, missing, mismatched = ({}, {}), [], []
    for kind, (want, have) in enumerate(((want_args, arg_params), (want_aux, aux_params))):
        for name, shape in want.items():
            if name not in have:
                missing.append(name)
            elif tuple(have[name].shape) != shape:
                mismatched.append((name, tuple(have[name].shape), shape))
            else:
                taken[kind][name] = have[name]
    unused = sorted((set(arg_params) - set(want_args)) | (set(aux_params) - set(want_aux)))
    return Match(taken[0], taken[1], tuple(missing), tuple(mismatched), tuple(unused))


def load_exact(path, symbol, data_shape, flag="--params"):
    """(arg_params, aux_params) of `path` for `symbol`: every array by name and shape, nothing
    missing or left over; ConfigError listing the differences otherwise."""
    match = match_params(symbol, data_shape, *split_params(read_params(path, flag), symbol))
    if not match.complete:
        raise ConfigError(f"{flag} {path} does not fit the network: {match.problems()}")
    return match.arg_params, match.aux_params
