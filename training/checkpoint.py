"""Checkpoints: atomic save with a manifest of digests, discovery and verified loading of
complete ones, the run's lock on its prefix, and the weights digest."""
import contextlib
import datetime
import errno
import fcntl
import hashlib
import json
import logging
import os
import pickletools
import re
import shutil
import socket

import mxnet as mx
import numpy as np

import utility

from .errors import CheckpointWriteError, ConfigError, mxnet_reason
from .model_info import validate_model_info

LOGGER = logging.getLogger("igc.train")


def _tmp_name(path):
    directory, base = os.path.split(os.path.abspath(path))
    return os.path.join(directory, f".{base}.tmp{os.getpid()}")


def _write_atomically(path, write, check=None, before_rename=None):
    """write(tmp_path), check(tmp_path) (raises when the file is not complete), fsync,
    before_rename(tmp_path), rename over `path`: a crash or a failed write leaves the old file
    (or none), never a partial one."""
    tmp = _tmp_name(path)
    try:
        write(tmp)
        if check is not None:
            check(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        if before_rename is not None:
            before_rename(tmp)
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


def file_digest(path):
    """{'size', 'sha256'} of a file's bytes."""
    return {"size": os.path.getsize(path), "sha256": utility.file_sha256(path)}


def verify_params_file(path):
    """Check a PREFIX-NNNN.params given by path (--params, --pretrained) against the manifest
    beside it when there is one (a file from elsewhere has none); ConfigError naming a file
    that differs from its digest."""
    match = re.match(r"(.*)-(\d{4,})\.params$", path)
    if match and os.path.isfile(f"{match.group(1)}-{match.group(2)}.manifest.json"):
        Checkpoints(match.group(1)).verify(int(match.group(2)))


def remove_dead_temporaries(directory, base):
    """Delete the hidden .BASE*.tmpPID files in `directory` that killed processes left behind
    (those whose process no longer exists); returns their paths."""
    if not os.path.isdir(directory):
        return []
    pattern = re.compile(r"\." + re.escape(base) + r".*\.tmp(\d+)$")
    removed = []
    for name in sorted(os.listdir(directory)):
        match = pattern.match(name)
        if match and not _process_exists(int(match.group(1))):
            path = os.path.join(directory, name)
            os.remove(path)
            removed.append(path)
    return removed


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
    with mx.model.load_checkpoint), PREFIX-NNNN.states (optimizer state, when it is local),
    PREFIX-model.json (the network, its classes and validation preprocessing: what scoring and
    prediction need to use the checkpoint without the training flags) and
    PREFIX-NNNN.manifest.json (the size and SHA-256 of each file the checkpoint wrote, and what
    defines the run, for --resume to compare).
    Each file is written atomically and checked, the manifest just before the .params and the
    .params last, so an existing .params marks a complete checkpoint with its manifest."""

    def __init__(self, prefix):
        self.prefix = prefix
        self.directory, self.base = os.path.split(os.path.abspath(prefix))

    def params_path(self, epoch):
        return f"{self.prefix}-{epoch:04d}.params"

    def states_path(self, epoch):
        return f"{self.prefix}-{epoch:04d}.states"

    def manifest_path(self, epoch):
        return f"{self.prefix}-{epoch:04d}.manifest.json"

    @property
    def symbol_path(self):
        return f"{self.prefix}-symbol.json"

    @property
    def model_info_path(self):
        return f"{self.prefix}-model.json"

    @property
    def lock_path(self):
        return f"{self.prefix}.lock"

    def model_info(self):
        """The PREFIX-model.json dict, checked against its schema, or None when there is none
        (ConfigError naming the file and the key when it is unreadable or invalid)."""
        path = self.model_info_path
        if not os.path.isfile(path):
            return None
        try:
            with open(path, "rb") as f:
                info = json.loads(f.read().decode())
        except (OSError, ValueError) as err:
            raise ConfigError(f"{path}: unreadable ({err})") from None
        return validate_model_info(info, path)

    def save(self, epoch, symbol, module, with_states, model_info=None, identity=None):
        """Write checkpoint `epoch` (`identity`: what defines the run, kept in its manifest);
        CheckpointWriteError (naming the newest intact checkpoint) when a file cannot be written
        in full. The files of earlier checkpoints are untouched."""
        intact = self.epochs()
        arg_params, aux_params = module.get_params()
        blob = {f"arg:{k}": v for k, v in arg_params.items()}
        blob.update({f"aux:{k}": v for k, v in aux_params.items()})
        # Weights, and momentum as large again in the .states.
        needed = 2 * sum(v.size * np.dtype(v.dtype).itemsize for v in blob.values())
        written = {}

        def record(path):
            return lambda tmp: written.update({os.path.basename(path): file_digest(tmp)})

        def write_manifest(tmp_params):
            record(self.params_path(epoch))(tmp_params)
            write_bytes_atomically(self.manifest_path(epoch), json.dumps(
                {"epoch": epoch, "files": written, "run": identity}, indent=1).encode())

        try:
            os.makedirs(self.directory, exist_ok=True)
            _write_atomically(self.symbol_path, _write_bytes(symbol.tojson().encode()),
                              before_rename=record(self.symbol_path))
            if model_info is not None:
                _write_atomically(self.model_info_path,
                                  _write_bytes(json.dumps(model_info, indent=1).encode()),
                                  before_rename=record(self.model_info_path))
            if with_states:
                _write_atomically(self.states_path(epoch), module.save_optimizer_states,
                                  before_rename=record(self.states_path(epoch)))
            _write_atomically(self.params_path(epoch), lambda tmp: mx.nd.save(tmp, blob),
                              _check_params({k: v.shape for k, v in blob.items()}),
                              before_rename=write_manifest)
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

    def manifest(self, epoch):
        """The manifest of checkpoint `epoch`, or None for a checkpoint written before
        manifests existed; ConfigError when it is unreadable."""
        path = self.manifest_path(epoch)
        if not os.path.isfile(path):
            return None
        try:
            with open(path, "rb") as f:
                manifest = json.loads(f.read().decode())
            files = manifest["files"]
            if not all(isinstance(v, dict) and set(v) == {"size", "sha256"}
                       for v in files.values()):
                raise ValueError("an entry of 'files' is not {size, sha256}")
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            raise ConfigError(f"checkpoint manifest {path} is unreadable ({err})") from None
        return manifest

    def verify(self, epoch):
        """The manifest of checkpoint `epoch` after checking that its .params (and .states,
        when the manifest lists one) have the recorded size and SHA-256; ConfigError naming the
        file that differs. A checkpoint without a manifest (written before they existed) is
        used with a warning: its integrity cannot be checked."""
        params = self.params_path(epoch)
        manifest = self.manifest(epoch)
        if manifest is None:
            LOGGER.warning("%s has no manifest (%s): written before checkpoints recorded "
                           "digests, so its integrity is not checked", params,
                           os.path.basename(self.manifest_path(epoch)))
            return None
        files = manifest["files"]
        if os.path.basename(params) not in files:
            raise ConfigError(f"checkpoint manifest {self.manifest_path(epoch)} does not list "
                              f"{params}")
        for path in (params, self.states_path(epoch)):
            expected = files.get(os.path.basename(path))
            if expected is None:
                continue
            if not os.path.isfile(path):
                raise ConfigError(f"{path} is missing (listed in {self.manifest_path(epoch)})")
            if file_digest(path) != expected:
                raise ConfigError(f"{path} does not match its SHA-256 in "
                                  f"{self.manifest_path(epoch)}: damaged or changed since "
                                  "it was written")
        return manifest

    def load(self, epoch):
        """(arg_params, aux_params, states_path or None), verified against the manifest;
        ConfigError when unreadable or damaged."""
        path = self.params_path(epoch)
        if not os.path.isfile(path):
            raise ConfigError(f"--load-epoch {epoch}: {path} not found")
        try:
            blob = mx.nd.load(path)
        except mx.base.MXNetError as err:
            raise ConfigError(f"checkpoint {path} is unreadable: {mxnet_reason(err)}") \
                from None
        states = self.states_path(epoch)
        if os.path.isfile(states):
            _check_pickle(states)
        # The digests find what still parses: a flipped bit in a weight or a momentum.
        manifest = self.verify(epoch)
        arg_params = {k[4:]: v for k, v in blob.items() if k.startswith("arg:")}
        aux_params = {k[4:]: v for k, v in blob.items() if k.startswith("aux:")}
        # A .states the manifest does not list was not written with this checkpoint.
        if not os.path.isfile(states) or (
                manifest is not None and os.path.basename(states) not in manifest["files"]):
            states = None
        return arg_params, aux_params, states

    def latest_complete(self):
        """(epoch, loaded) of the newest checkpoint that loads, or (None, None)."""
        for epoch in reversed(self.epochs()):
            try:
                return epoch, self.load(epoch)
            except ConfigError as err:
                LOGGER.warning("skipping checkpoint: %s", err)
        return None, None

    def run_identity(self, epoch):
        """What defined the run that wrote checkpoint `epoch` (None without a manifest)."""
        manifest = self.manifest(epoch)
        return manifest.get("run") if manifest else None

    def move_aside_after(self, epoch):
        """Move the checkpoints after `epoch` (a later run's, under a prefix started again
        without --resume) into PREFIX.stale-TIME/, with a copy of the prefix's symbol and model
        description, so that --resume never continues them and they still score by prefix;
        returns that folder, or None when there were none."""
        stale = [e for e in self.epochs() if e > epoch]
        if not stale:
            return None
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        folder = f"{self.prefix}.stale-{stamp}"
        os.makedirs(folder, exist_ok=True)
        for path in (self.symbol_path, self.model_info_path):
            if os.path.isfile(path):
                shutil.copy2(path, folder)
        for e in stale:
            for path in (self.manifest_path(e), self.states_path(e), self.params_path(e)):
                if os.path.exists(path):
                    os.replace(path, os.path.join(folder, os.path.basename(path)))
        return folder

    def remove_dead_temporaries(self):
        """Delete the hidden .BASE-*.tmpPID files that killed runs left behind; returns their
        paths."""
        return remove_dead_temporaries(self.directory, self.base + "-")

    @contextlib.contextmanager
    def lock(self):
        """Hold PREFIX.lock exclusively for the block: one run per prefix. The kernel drops the
        lock when its process dies, so a killed run never blocks the next one; a live holder is
        named (PID and host) in the ConfigError."""
        os.makedirs(self.directory, exist_ok=True)
        try:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_NONBLOCK, 0o644)
        except OSError as err:
            raise ConfigError(f"--model-prefix: cannot open {self.lock_path} "
                              f"({err.strerror or err})") from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or \
                    "a process that has not written its PID yet"
                raise ConfigError(f"--model-prefix {self.prefix} is in use by another run "
                                  f"({holder}; lock {self.lock_path}): wait for it to end or "
                                  "choose another --model-prefix") from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"PID {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
            yield
        finally:
            os.close(fd)


def _check_pickle(path):
    """Module.load_optimizer_states unpickles the .states: walk its opcodes (nothing is built,
    no device memory taken) to find a cut or damaged file now."""
    try:
        with open(path, "rb") as f:
            last = None
            for last, _, _ in pickletools.genops(f):
                pass
        if last is None or last.name != "STOP":
            raise ValueError("no STOP opcode")
    except Exception as err:  # noqa: BLE001 - whatever a damaged pickle raises
        raise ConfigError(f"optimizer state {path} is unreadable ({type(err).__name__}: "
                          f"{err})") from None


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
