"""Checkpoints: atomic save, discovery of complete ones, loading, and the weights digest."""
import datetime
import errno
import hashlib
import json
import logging
import os
import pickletools
import re

import mxnet as mx
import numpy as np

from .errors import CheckpointWriteError, ConfigError, mxnet_reason

LOGGER = logging.getLogger("igc.train")


def _tmp_name(path):
    directory, base = os.path.split(os.path.abspath(path))
    return os.path.join(directory, f".{base}.tmp{os.getpid()}")


def _write_atomically(path, write, check=None):
    """write(tmp_path), check(tmp_path) (raises when the file is not complete), fsync, rename
    over `path`: a crash or a failed write leaves the old file (or none), never a partial one."""
    tmp = _tmp_name(path)
    try:
        write(tmp)
        if check is not None:
            check(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _write_bytes(data):
    """A write() for _write_atomically with Python I/O, which reports ENOSPC (MXNet's
    Symbol.save does not), and a size check."""
    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if os.path.getsize(tmp) != len(data):
            raise OSError(errno.EIO, f"{tmp} has {os.path.getsize(tmp)} of {len(data)} bytes")
    return write


def write_bytes_atomically(path, data):
    """`data` to `path` through a temporary name, fsynced: never a partial file at `path`."""
    _write_atomically(path, _write_bytes(data))


def _check_params(expected):
    """The written .params loads back with every array at its shape (mx.nd.save may not report
    a short write)."""
    def check(tmp):
        try:
            blob = mx.nd.load(tmp)
        except mx.base.MXNetError:
            raise OSError(errno.EIO, f"{tmp} does not load back") from None
        if {k: v.shape for k, v in blob.items()} != expected:
            raise OSError(errno.EIO, f"{tmp} does not hold every array")
    return check


class Checkpoints:
    """PREFIX-symbol.json, PREFIX-NNNN.params (as mx.model.save_checkpoint names them, loadable
    with mx.model.load_checkpoint), PREFIX-NNNN.states (optimizer state, when it is local) and
    PREFIX-model.json (the network, its classes and validation preprocessing: what scoring and
    prediction need to use the checkpoint without the training flags).
    Each file is written atomically and checked, the .params last, so an existing .params
    marks a complete checkpoint."""

    def __init__(self, prefix):
        self.prefix = prefix
        self.directory, self.base = os.path.split(os.path.abspath(prefix))

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

    def save(self, epoch, symbol, module, with_states, model_info=None):
        """Write checkpoint `epoch`; CheckpointWriteError (naming the newest intact checkpoint)
        when a file cannot be written in full. The files of earlier checkpoints are untouched."""
        intact = self.epochs()
        arg_params, aux_params = module.get_params()
        blob = {f"arg:{k}": v for k, v in arg_params.items()}
        blob.update({f"aux:{k}": v for k, v in aux_params.items()})
        # Weights, and momentum as large again in the .states.
        needed = 2 * sum(v.size * np.dtype(v.dtype).itemsize for v in blob.values())
        try:
            os.makedirs(self.directory, exist_ok=True)
            _write_atomically(self.symbol_path, _write_bytes(symbol.tojson().encode()))
            if model_info is not None:
                write_bytes_atomically(self.model_info_path,
                                       json.dumps(model_info, indent=1).encode())
            if with_states:
                _write_atomically(self.states_path(epoch), module.save_optimizer_states)
            _write_atomically(self.params_path(epoch), lambda tmp: mx.nd.save(tmp, blob),
                              _check_params({k: v.shape for k, v in blob.items()}))
        except (OSError, mx.base.MXNetError) as err:
            # MXNet's writers do not always say why a write failed: the free space does.
            if (isinstance(err, OSError) and err.errno == errno.ENOSPC) or \
                    _free_bytes(self.directory) < needed:
                reason = f"the disk holding {self.directory} is full"
            else:
                reason = f"{str(err).splitlines()[0]}"
            kept = (f"the last complete checkpoint, {self.params_path(intact[-1])}, is intact"
                    if intact else "no earlier checkpoint exists")
            raise CheckpointWriteError(
                f"cannot write checkpoint {self.params_path(epoch)}: {reason}; {kept}") from None

    def epochs(self):
        pattern = re.compile(re.escape(self.base) + r"-(\d{4,})\.params$")
        if not os.path.isdir(self.directory):
            return []
        return sorted(int(m.group(1)) for m in map(pattern.match, os.listdir(self.directory))
                      if m)

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
        if not os.path.isfile(states):
            return arg_params, aux_params, None
        try:
            # Module.load_optimizer_states unpickles it: walk the opcodes (nothing is built, no
            # device memory taken) to find a cut or damaged file now.
            with open(states, "rb") as f:
                last = None
                for last, _, _ in pickletools.genops(f):
                    pass
            if last is None or last.name != "STOP":
                raise ValueError("no STOP opcode")
        except Exception as err:  # noqa: BLE001 - whatever a damaged pickle raises
            raise ConfigError(f"optimizer state {states} is unreadable ({type(err).__name__}: "
                              f"{err})") from None
        return arg_params, aux_params, states

    def latest_complete(self):
        """(epoch, loaded) of the newest checkpoint that loads, or (None, None)."""
        for epoch in reversed(self.epochs()):
            try:
                return epoch, self.load(epoch)
            except ConfigError as err:
                LOGGER.warning("skipping checkpoint: %s", err)
        return None, None

    def move_aside_after(self, epoch):
        """Move the checkpoints after `epoch` (a later run's, under a prefix started again
        without --resume) into PREFIX.stale-TIME/, so that --resume never continues them;
        returns that folder, or None when there were none."""
        stale = [e for e in self.epochs() if e > epoch]
        if not stale:
            return None
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        folder = f"{self.prefix}.stale-{stamp}"
        os.makedirs(folder, exist_ok=True)
        for e in stale:
            for path in (self.params_path(e), self.states_path(e)):
                if os.path.exists(path):
                    os.replace(path, os.path.join(folder, os.path.basename(path)))
        return folder

    def remove_dead_temporaries(self):
        """Delete the hidden .BASE-*.tmpPID files that killed runs left behind (those whose
        process no longer exists); returns their paths."""
        if not os.path.isdir(self.directory):
            return []
        pattern = re.compile(r"\." + re.escape(self.base) + r"-.*\.tmp(\d+)$")
        removed = []
        for name in sorted(os.listdir(self.directory)):
            match = pattern.match(name)
            if match and not _process_exists(int(match.group(1))):
                path = os.path.join(self.directory, name)
                os.remove(path)
                removed.append(path)
        return removed


def _free_bytes(directory):
    try:
        stat = os.statvfs(directory)
    except OSError:
        return 0
    return stat.f_bavail * stat.f_frsize


def _process_exists(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def weights_digest(module):
    """SHA-1 over the learnable parameters' bytes in name order: equal digests = identical
    weights. BN running statistics are left out: under a dist kvstore each worker keeps its own."""
    arg_params, _ = module.get_params()
    digest = hashlib.sha1()
    for name, value in sorted(arg_params.items()):
        digest.update(name.encode())
        digest.update(value.asnumpy().tobytes())
    return digest.hexdigest()
