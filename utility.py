"""Shared helpers: loading the operator plugin, counting, schedules, callbacks and logging."""
import os

import mxnet as mx

PROJECT_DIR = os.path.dirname(os.path.abspath(__file__))
OPS_LIB_ENV = "IGC_OPS_LIB"
DEFAULT_OPS_LIB = os.path.join(PROJECT_DIR, "build", "libigc_ops.so")

_loaded_ops_lib = None


class OpsLibraryError(RuntimeError):
    """The operator plugin is missing or cannot be loaded."""


def ops_library_path():
    """Where `load_ops` looks: $IGC_OPS_LIB if set, else build/libigc_ops.so, as an absolute path."""
    return os.path.abspath(os.environ.get(OPS_LIB_ENV) or DEFAULT_OPS_LIB)


def load_ops(path=None):
    """Load the IGC operator plugin once per process; afterwards mx.nd/mx.sym.Reorder exist.

    Returns the absolute path of the loaded library. A second call is free; asking for a
    different library after one is loaded is an error (MXNet cannot unload or replace ops).
    """
    global _loaded_ops_lib
    path = os.path.abspath(path) if path else ops_library_path()
    if _loaded_ops_lib is not None:
        if path != _loaded_ops_lib:
            raise OpsLibraryError(
                f"IGC operator library {_loaded_ops_lib} is already loaded; cannot also load {path}")
        return _loaded_ops_lib
    if not os.path.isfile(path):
        hint = (f"${OPS_LIB_ENV} points to it" if os.environ.get(OPS_LIB_ENV)
                else f"run `make ops` in {PROJECT_DIR} to build it, or set ${OPS_LIB_ENV}")
        raise OpsLibraryError(f"IGC operator library not found at {path} ({hint})")
    try:
        mx.library.load(path, verbose=False)
    except mx.base.MXNetError as err:
        raise OpsLibraryError(f"cannot load IGC operator library {path}: {err}") from err
    _loaded_ops_lib = path
    return path
