"""The IGC network zoo: `get_symbol(name, num_classes, **config)` and friends.

Every builder is registered under its `--network` name with an explicit keyword signature;
`network_defaults(name)` lists the config keys a network accepts, `network_info(name)` its input
size, dataset kind and family; `get_features(name, **config)` the backbone up to the global pool
with each stage's output; `optimize_for_inference` rewrites a trained graph for inference.
Run `python -m network NAME` for a per-stage summary.
"""
import os
import sys

try:
    import mxnet  # noqa: F401
    import numpy  # noqa: F401
except ModuleNotFoundError as err:
    # A program run by a Python without the project's packages: one line, not a traceback.
    _root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    raise SystemExit(f"{os.path.basename(sys.argv[0] or 'python')}: error: {err.name} is not "
                     f"installed for {sys.executable}; run the command with "
                     f"{os.path.join(_root, '.venv', 'bin', 'python')} (made by "
                     f"'make -C {_root} venv')") from None

from . import igcv2, igcv3, plain, resnet  # noqa: F401  (registers the builders)
from .features import get_features
from .graph import fuse_input_batchnorms, optimize_for_inference
from .registry import (
                       config_options,
                       get_plan,
                       get_symbol,
                       list_networks,
                       network_defaults,
                       network_info,
                       network_options,
)

__all__ = ["config_options", "fuse_input_batchnorms", "get_features", "get_plan", "get_symbol",
           "list_networks", "network_defaults", "network_info", "network_options",
           "optimize_for_inference"]
