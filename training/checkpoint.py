"""Checkpoints: atomic save, discovery of complete ones, loading, and the weights digest."""
import hashlib
import json
import logging
import os
import re

import mxnet as mx

from .errors import ConfigError, mxnet_reason

LOGGER = logging.getLogger("igc.train")


def write_atomically(path, write):
    """write(tmp_path) then fsync and rename over `path`: a crash leaves the old file or none."""
    directory, base = os.path.split(os.path.abspath(path))
    tmp = os.path.join(directory, f".{base}.tmp{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


class Checkpoints:
    """PREFIX-symbol.json, PREFIX-NNNN.params (as mx.model.save_checkpoint names them, loadable
    with mx.model.load_checkpoint), PREFIX-NNNN.states (optimizer state, when it is local) and
    PREFIX-model.json (the network, its classes and validation preprocessing: what scoring and
    prediction need to use the checkpoint without the training flags).
    Each file is written atomically and the .params last, so an existing .params marks a
    complete checkpoint."""

    def __init__(self, prefix):
        self.prefix = prefix

    def params_path(self, epoch):
        return f"{self.prefix}-{epoch:04d}.params"

    def states_path(self, epoch):
        return f"{self.prefix}-{epoch:04d}.states"

    @property
    def symbol_path(self):
        return f"{self.prefix}-symbol.json"

    @property
    def model_info_path(self):
        return f"{self.prefix}-model.json"

    def save(self, epoch, symbol, module, with_states, model_info=None):
        os.makedirs(os.path.dirname(os.path.abspath(self.prefix)), exist_ok=True)
        write_atomically(self.symbol_path, symbol.save)
        if model_info is not None:
            def write_info(tmp):
                with open(tmp, "w") as f:
                    json.dump(model_info, f, indent=1)
            write_atomically(self.model_info_path, write_info)
        if with_states:
            write_atomically(self.states_path(epoch), module.save_optimizer_states)
        arg_params, aux_params = module.get_params()
        blob = {f"arg:{k}": v for k, v in arg_params.items()}
        blob.update({f"aux:{k}": v for k, v in aux_params.items()})
        write_atomically(self.params_path(epoch), lambda tmp: mx.nd.save(tmp, blob))

    def model_info(self):
        """The PREFIX-model.json dict, or None when there is none (ConfigError if unreadable)."""
        path = self.model_info_path
        if not os.path.isfile(path):
            return None
        try:
            with open(path) as f:
                info = json.load(f)
        except (OSError, ValueError) as err:
            raise ConfigError(f"{path}: unreadable ({err})") from None
        if not isinstance(info, dict) or "network" not in info:
            raise ConfigError(f"{path}: not a model description (no 'network')")
        return info

    def epochs(self):
        directory, base = os.path.split(os.path.abspath(self.prefix))
        pattern = re.compile(re.escape(base) + r"-(\d{4,})\.params$")
        if not os.path.isdir(directory):
            return []
        return sorted(int(m.group(1)) for m in map(pattern.match, os.listdir(directory)) if m)

    def load(self, epoch):
        """(arg_params, aux_params, states_path or None); ConfigError when unreadable."""
        path = self.params_path(epoch)
        if not os.path.isfile(path):
            raise ConfigError(f"--load-epoch {epoch}: {path} not found")
        try:
            blob = mx.nd.load(path)
        except mx.base.MXNetError as err:
            raise ConfigError(f"checkpoint {path} is unreadable: {mxnet_reason(err)}") \
                from None
        arg_params = {k[4:]: v for k, v in blob.items() if k.startswith("arg:")}
        aux_params = {k[4:]: v for k, v in blob.items() if k.startswith("aux:")}
        states = self.states_path(epoch)
        return arg_params, aux_params, states if os.path.isfile(states) else None

    def latest_complete(self):
        """(epoch, loaded) of the newest checkpoint that loads, or (None, None)."""
        for epoch in reversed(self.epochs()):
            try:
                return epoch, self.load(epoch)
            except ConfigError as err:
                LOGGER.warning("skipping checkpoint: %s", err)
        return None, None


def weights_digest(module):
    """SHA-1 over the learnable parameters' bytes in name order: equal digests = identical
    weights. BN running statistics are left out: under a dist kvstore each worker keeps its own."""
    arg_params, _ = module.get_params()
    digest = hashlib.sha1()
    for name, value in sorted(arg_params.items()):
        digest.update(name.encode())
        digest.update(value.asnumpy().tobytes())
    return digest.hexdigest()
